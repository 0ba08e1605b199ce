"""A streamed answer (server-sent events) that stops the work behind it when the client leaves.

Starlette's ``StreamingResponse`` runs every stream in an anyio task group beside a second task
listening for the disconnect. Here the events are sent from the request's own task, and one
plain asyncio task waits on ``receive``: if the client goes first it cancels the sending task,
so the event generator is closed where it waits (which cancels the task behind it). uvicorn
drops a body sent after the disconnect, so a chunk racing the disconnect is harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping

from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"
"""The last event of a stream: the batch that ends with it ends the body in the same write."""
_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")


class EventStream:
    """An ASGI response: status 200, ``headers``, then each of ``events`` (framed already)
    up to the one ending with ``DONE``."""

    def __init__(self, events: AsyncGenerator[bytes, None], headers: Mapping[str, str]) -> None:
        self.events = events
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
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            async for event in self.events:
                finished = event.endswith(DONE)
                await send({"type": "http.response.body", "body": event,
                            "more_body": not finished})
                if finished:
                    break
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            client_left = watcher.done() and not watcher.cancelled()
            # Swallow only our own cancellation; one from elsewhere (shutdown) goes on.
            if not client_left or sender.uncancel() > 0:
                raise
        finally:
            watcher.cancel()
            await self.events.aclose()


async def _cancel_on_disconnect(receive: Receive, sender: asyncio.Task[object]) -> None:
    """Cancel ``sender`` when the client disconnects (the request body was read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    sender.cancel()
