"""A stand-in for Pulsar's admin REST API, serving topic stats, for the admin client's tests.

Pulsar itself cannot run here (a JVM service fetched from Apache's servers), so this serves only
the one seam the broker uses over HTTP: ``GET /admin/v2/persistent/{tenant}/{namespace}/{topic}
/stats``, answering documents shaped as Pulsar documents them (``TopicStats``), 404 with Pulsar's
``{"reason": "Topic not found"}`` for unknown topics, a 307 redirect to the owning broker when
told to, an error status or a delay when told to. The Pulsar client itself runs for real in the
other tests. Runs on a thread of its own (tests/threaded_server.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.threaded_server import ThreadedServer

STATS_PATH = "/admin/v2/persistent/{tenant}/{namespace}/{topic}/stats"


def topic_stats(subscriptions: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """A topic stats document as Pulsar answers it; ``subscriptions``: name -> (msgBacklog,
    unackedMessages)."""
    return {
        "msgRateIn": 12.5, "msgThroughputIn": 6400.0, "msgRateOut": 11.0,
        "msgThroughputOut": 5632.0, "bytesInCounter": 1024000, "msgInCounter": 2000,
        "bytesOutCounter": 998400, "msgOutCounter": 1950, "averageMsgSize": 512.0,
        "msgChunkPublished": False, "storageSize": 1048576, "backlogSize": 25600,
        "earliestMsgPublishTimeInBacklogs": 0, "offloadedStorageSize": 0,
        "publishers": [{
            "msgRateIn": 12.5, "msgThroughputIn": 6400.0, "averageMsgSize": 512.0,
            "producerId": 0, "producerName": "standalone-0-3", "accessMode": "Shared",
            "address": "/10.0.0.7:51234", "connectedSince": "2024-05-02T10:00:00.000Z",
            "clientVersion": "Pulsar-CPP-v3.7.0",
        }],
        "waitingPublishers": 0,
        "subscriptions": {
            name: {
                "msgRateOut": 11.0, "msgThroughputOut": 5632.0, "bytesOutCounter": 998400,
                "msgOutCounter": 1950, "msgRateRedeliver": 0.0, "chunkedMessageRate": 0,
                "msgBacklog": backlog, "backlogSize": backlog * 512, "msgBacklogNoDelayed": backlog,
                "blockedSubscriptionOnUnackedMsgs": False, "msgDelayed": 0,
                "unackedMessages": unacked, "type": "Shared", "msgRateExpired": 0.0,
                "totalMsgExpired": 0, "lastExpireTimestamp": 0,
                "lastConsumedFlowTimestamp": 1714644000000, "lastConsumedTimestamp": 1714644000000,
                "lastAckedTimestamp": 1714644000000, "lastMarkDeleteAdvancedTimestamp": 0,
                "consumers": [{
                    "msgRateOut": 11.0, "msgThroughputOut": 5632.0, "bytesOutCounter": 998400,
                    "msgOutCounter": 1950, "msgRateRedeliver": 0.0, "chunkedMessageRate": 0.0,
                    "consumerName": "worker-1", "availablePermits": 0,
                    "unackedMessages": unacked, "avgMessagesPerEntry": 1,
                    "blockedConsumerOnUnackedMsgs": False, "lastAckedTimestamp": 1714644000000,
                    "lastConsumedTimestamp": 1714644000000, "address": "/10.0.0.9:40022",
                    "connectedSince": "2024-05-02T10:00:01.000Z",
                    "clientVersion": "Pulsar-CPP-v3.7.0",
                }],
                "isDurable": True, "isReplicated": False, "allowOutOfOrderDelivery": False,
                "consumersAfterMarkDeletePosition": {}, "nonContiguousDeletedMessagesRanges": 0,
                "nonContiguousDeletedMessagesRangesSerializedSize": 0,
                "delayedMessageIndexSizeInBytes": 0, "subscriptionProperties": {},
                "filterProcessedMsgCount": 0, "filterAcceptedMsgCount": 0,
                "filterRejectedMsgCount": 0, "filterRescheduledMsgCount": 0,
                "durable": True, "replicated": False,
            }
            for name, (backlog, unacked) in subscriptions.items()
        },
        "replication": {}, "deduplicationStatus": "Disabled",
        "nonContiguousDeletedMessagesRanges": 0,
        "nonContiguousDeletedMessagesRangesSerializedSize": 0,
        "delayedMessageIndexSizeInBytes": 0, "compaction": {
            "lastCompactionRemovedEventCount": 0, "lastCompactionSucceedTimestamp": 0,
            "lastCompactionFailedTimestamp": 0, "lastCompactionDurationTimeInMills": 0,
        },
        "ownerBroker": "localhost:8080",
    }


class StatsServer(ThreadedServer):
    """``with StatsServer() as server:`` serves at ``server.url``; set ``documents`` by path."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.redirect_to: str | None = None
        self.delay_s = 0.0
        self.fail_status: int | None = None
        app = Starlette(routes=[Route(STATS_PATH, self._stats)])
        super().__init__(app, "Pulsar stats stand-in")

    def serve(self, path: str, document: dict[str, Any] | bytes) -> None:
        self.documents[path] = (document if isinstance(document, bytes)
                                else msgspec.json.encode(document))

    async def _stats(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append(path)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status is not None:
            return JSONResponse({"reason": "Internal server error"}, status_code=self.fail_status)
        if self.redirect_to is not None:
            return RedirectResponse(f"{self.redirect_to}{path}", status_code=307)
        document = self.documents.get(path)
        if document is None:
            return JSONResponse({"reason": "Topic not found"}, status_code=404)
        return Response(document, media_type="application/json")
