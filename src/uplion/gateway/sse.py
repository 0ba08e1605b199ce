"""A streamed answer (server-sent events) that stops the work behind it when the client leaves,
and the cap on the streams one API token holds at once.

Starlette's ``StreamingResponse`` runs every stream in an anyio task group beside a second task
listening for the disconnect. Here the events are sent from the request's own task, and one
plain asyncio task waits on ``receive``: if the client goes first it cancels the sending task,
so the event generator is closed where it waits (which cancels the task behind it). uvicorn
drops a body sent after the disconnect, so a chunk racing the disconnect is harmless.

A client that stops reading makes the server's writes wait (uvicorn's flow control); a write
still waiting at the request's deadline ends the stream there, unfinished, instead of letting the
client hold the request (its task, its reservation, its stream slot) for as long as it likes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping

from starlette.types import Message, Receive, Scope, Send

from uplion import protocol
from uplion.gateway import errors
from uplion.gateway.admission import Admission, AdmissionUnavailable

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
"""The last event of a stream: the batch that ends with it ends the body in the same write."""
_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")


class EventStream:
    """An ASGI response: status 200, ``headers``, then each of ``events`` (framed already)
    up to the one ending with ``DONE``, or up to ``deadline`` (Unix seconds) if that is first."""

    def __init__(
        self, events: AsyncGenerator[bytes, None], headers: Mapping[str, str],
        deadline: float | None = None,
    ) -> None:
        self.events = events
        self.deadline = deadline
        self.raw_headers = [
            *((name.lower().encode("latin-1"), value.encode("latin-1"))
              for name, value in headers.items()),
            _CONTENT_TYPE,
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.current_task()
        assert sender is not None
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, sender))
        try:
            await self._send_all(send)
        except TimeoutError:
            log.warning("%s %s: the client did not read its stream; cut at the deadline",
                        scope.get("method"), scope.get("path"))
        except asyncio.CancelledError:
            client_left = watcher.done() and not watcher.cancelled()
            # Swallow only our own cancellation; one from elsewhere (shutdown) goes on.
            if not client_left or sender.uncancel() > 0:
                raise
        finally:
            watcher.cancel()
            await self.events.aclose()

    async def _send_all(self, send: Send) -> None:
        """Send everything; ``TimeoutError`` when a write still waits at the deadline. Only
        writes are timed: the events end by the deadline themselves (with a timeout error)."""
        loop = asyncio.get_running_loop()
        until = None if self.deadline is None else loop.time() + self.deadline - time.time()

        async def write(message: Message) -> None:
            async with asyncio.timeout_at(until):
                await send(message)

        await write({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for event in self.events:
            finished = event.endswith(DONE)
            await write({"type": "http.response.body", "body": event, "more_body": not finished})
            if finished:
                return
        await write({"type": "http.response.body", "body": b"", "more_body": False})


async def _cancel_on_disconnect(receive: Receive, sender: asyncio.Task[object]) -> None:
    """Cancel ``sender`` when the client disconnects (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    sender.cancel()


class StreamSlots:
    """How many streams each API token has open, up to ``per_token``: counted by the admission,
    so across every gateway sharing its store (``admission.rules``, "Streams")."""

    def __init__(self, per_token: int, admission: Admission) -> None:
        self.per_token = per_token
        self._admission = admission
        self._closing: set[asyncio.Task[None]] = set()

    async def hold(self, token_id: str, lease_s: float) -> Callable[[], None]:
        """Count one more stream of ``token_id`` for at most ``lease_s`` (429 beyond the cap,
        503 when the store is unreachable); call what it returns, once or more, when the stream
        is over: its slot is given back in the background."""
        stream_id = uuid.uuid4().hex
        try:
            opened = await self._admission.open_stream(token_id, stream_id, self.per_token,
                                                       lease_s)
        except AdmissionUnavailable as error:
            raise errors.ApiError(protocol.ErrorInfo(
                "The rate limiter is unreachable right now; retry shortly.",
                code="rate_limiter_unavailable", status=503,
            ), headers={"Retry-After": "1"}) from error
        if not opened:
            plural = "stream" if self.per_token == 1 else "streams"
            raise errors.ApiError(protocol.ErrorInfo(
                f"This API key has {self.per_token} {plural} open already, the most it may "
                "hold at once; wait for one to end.", type="requests", code="too_many_streams",
                status=429,
            ), headers={"Retry-After": "1"})
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                closing = asyncio.get_running_loop().create_task(
                    self._admission.close_stream(token_id, stream_id))
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)

        return release

    async def settled(self) -> None:
        """Wait until every slot released so far is given back to the store."""
        while self._closing:
            await asyncio.wait(set(self._closing))
