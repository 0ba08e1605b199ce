"""Where requests become calls: check the model, admit, publish the task, hand back its ``Call``.

Shared by the OpenAI and KServe v2 front ends. A Failed model is refused at once (503); the
ledger admits the request (rate limits and quota, its maximum reserved: 429 otherwise); the
task, carrying its ``max_tokens``, is published once its ``Call`` follows the reply, so no chunk
arrives unrouted and every later failure ends in the call's one ``finish``. A publish the broker
does not take is a 503 that reserves nothing; a cold model's queue position is read after
publishing, at best (a failure there leaves the header out). Cancellations of calls that ended
without their worker's answer run in the background, their failures logged. Every answer (a
refusal by the limits aside) is counted in the metrics and the live stats of the model version
that gave it, which the header ``x-uplion-model-version`` names. Each request has its
``requestlog.Record`` (its span in the trace, its line in the request log) from before its
admission; the task carries the trace to its worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uplion import protocol
from uplion.accounts.principal import Principal
from uplion.billing import UsageStream
from uplion.gateway import call, edge, errors, ledger, requestlog
from uplion.gateway.admission import Admission
from uplion.gateway.call import VERSION_HEADER, Call, ClientGone
from uplion.gateway.catalog import Route
from uplion.gateway.estimate import Estimate
from uplion.gateway.health import HealthBoard
from uplion.gateway.metrics import REFUSAL_REASONS, GatewayMetrics, bounded
from uplion.gateway.relay import Relay

__all__ = ["VERSION_HEADER", "Call", "ClientGone", "Exchange"]

log = logging.getLogger(__name__)


class Exchange:
    def __init__(
        self, relay: Relay, metrics: GatewayMetrics, admission: Admission, usage: UsageStream,
        health: HealthBoard, *, cancel_grace_s: float = protocol.CANCEL_REPORT_GRACE_S,
    ) -> None:
        self.relay = relay
        self.health = health
        self.metrics = metrics
        self.ledger = ledger.Ledger(admission, usage)
        self.cancel_grace_s = cancel_grace_s
        self._cleaning: set[asyncio.Task[None]] = set()

    async def call(
        self, route: Route, kind: protocol.Protocol, payload: dict[str, Any], stream: bool,
        caller: Principal, estimate: Estimate, origin: edge.RequestContext | None = None,
    ) -> Call:
        """Admit and publish; a Failed model raises ``errors.ApiError`` (503) at once, a refusal
        by the limits a 429 with its headers, a broker that does not take the task a 503.
        ``origin``: the HTTP request's id and ``traceparent`` (none: a new id and trace)."""
        task_id = protocol.new_task_id()
        record = requestlog.Record(
            origin.id if origin else task_id, task_id, route.spec.name, route.spec.version, kind,
            stream, caller.token_id, origin.traceparent if origin else None,
        )
        try:
            return await self._open(route, kind, payload, stream, caller, estimate, record)
        except BaseException as error:
            record.refused(error)  # nothing when its call ended already
            raise

    async def _open(
        self, route: Route, kind: protocol.Protocol, payload: dict[str, Any], stream: bool,
        caller: Principal, estimate: Estimate, record: requestlog.Record,
    ) -> Call:
        spec = route.spec
        task_id = record.task_id
        model_health = self.health.of(spec.name, spec.version)
        if model_health.phase == "Failed":
            self.metrics.requests.labels(spec.name, spec.version, kind.value, "503").inc()
            self.metrics.refused.labels(spec.name, spec.version, "model_failed").inc()
            self.metrics.route(spec.name, spec.version, kind.value).live.record(503, 0.0)
            raise errors.ApiError(protocol.ErrorInfo(
                f"The model `{spec.name}` has failed ({model_health.reason}): "
                f"{model_health.message}", code="model_failed", status=503,
            ), headers={VERSION_HEADER: spec.version})
        with record.trace.child("uplion.admission"):
            entry = await self.ledger.admit(caller, task_id, spec.name, spec.version, estimate,
                                            spec.request_timeout_s + self.cancel_grace_s)
        decision = entry.decision
        if not decision.allowed:
            self.metrics.requests.labels(spec.name, spec.version, kind.value, "429").inc()
            self.metrics.refused.labels(
                spec.name, spec.version, bounded(decision.code, REFUSAL_REASONS)).inc()
            raise errors.ApiError(protocol.ErrorInfo(
                decision.message, type="requests" if decision.code == "rate_limit_exceeded"
                else "insufficient_quota", code=decision.code, status=429,
            ), headers=decision.headers)
        now = time.time()
        task = protocol.Task(
            id=task_id, model=spec.name, version=spec.version, protocol=kind, payload=payload,
            stream=stream, deadline=now + spec.request_timeout_s, reply_to=self.relay.address,
            tenant=caller.token_id, created=now, max_tokens=estimate.max_tokens,
            traceparent=record.trace.traceparent,
        )
        opened = Call(route, task, entry, self.relay, self.metrics, self._cancel,
                      self.cancel_grace_s, record)
        opened.headers.update(decision.headers)
        try:
            with record.trace.child("uplion.publish", {"messaging.destination.name": route.topic},
                                    producer=True):
                await self.relay.broker.publish(route.topic, task)
        except asyncio.CancelledError:
            opened.finish(call.CLIENT_GONE)
            raise
        except Exception as error:
            opened.finish(call.BROKER_ERROR)
            self.metrics.refused.labels(spec.name, spec.version, "broker_unavailable").inc()
            log.warning("task %s could not be published to %s: %s", task_id, route.topic, error)
            raise errors.ApiError(protocol.ErrorInfo(
                "The request queue is unreachable right now; retry shortly.",
                code="broker_unavailable", status=503,
            ), headers={"Retry-After": "1", VERSION_HEADER: spec.version}) from error
        self.relay.published(task_id)
        if model_health.phase == "Pending":  # cold start: say where the request waits
            await self._queue_position(opened)
        return opened

    async def _queue_position(self, opened: Call) -> None:
        try:
            backlog = await self.relay.broker.backlog(opened.route.topic, protocol.WORKER_GROUP)
        except Exception as error:
            log.info("no queue position for task %s: %s", opened.task.id, error)
            return
        opened.headers["x-uplion-queue-position"] = str(backlog.waiting)

    def _cancel(self, task: protocol.Task) -> None:
        """Tell workers to skip or stop ``task``, in the background (the call has ended)."""
        cancelling = asyncio.create_task(self._send_cancel(task), name=f"cancel-{task.id}")
        self._cleaning.add(cancelling)
        cancelling.add_done_callback(self._cleaning.discard)

    async def _send_cancel(self, task: protocol.Task) -> None:
        try:
            await self.relay.broker.cancel(task)
        except Exception as error:
            log.warning("task %s could not be cancelled (%s); its worker stops at its deadline",
                        task.id, error)

    async def drain(self) -> None:
        """On shutdown: send the cancellations under way, bill held calls with what is known,
        and wait for the settlements."""
        if self._cleaning:
            await asyncio.gather(*self._cleaning, return_exceptions=True)
        await self.ledger.drain()
