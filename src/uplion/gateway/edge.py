"""The gateway's outermost middleware: an id for every request, a JSON answer for anything that
escapes the handlers, and what a request holds released when its ASGI call ends.

The id is the client's ``x-request-id`` when it is a plain token (a proxy's, say), else a new
one; every answer carries it in ``x-request-id``. The client's ``traceparent`` is kept with it
(``uplion.tracing`` checks it when the request's span starts). An exception no handler maps to
an answer is logged with the id and the cause, and answered 500 in the shape of the path's API
(OpenAI's, or v2's under ``/v2``) with the id in the message, never as Starlette's plain-text
page. What a handler holds for the length of a request (a stream slot) is released here, however
it ends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from uplion import protocol
from uplion.gateway import errors, sse

log = logging.getLogger(__name__)

HEADER = "x-request-id"
_HEADER_BYTES = HEADER.encode()
_SCOPE_KEY = "uplion.request"
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_TRACEPARENT = b"traceparent"
_TRACEPARENT_MAX = 55  # version 00's length; longer ones are not kept


@dataclass
class RequestContext:
    """One request's id, its client's ``traceparent`` header, and what to release when it
    ends."""

    id: str
    streams: sse.StreamSlots
    traceparent: str | None = None
    _releases: list[Callable[[], None]] = field(default_factory=list)

    async def hold_stream(self, token_id: str, lease_s: float) -> None:
        """Count this request as one of ``token_id``'s open streams until it ends, or for
        ``lease_s`` at most (429 if the token holds its cap already)."""
        self._releases.append(await self.streams.hold(token_id, lease_s))

    def release(self) -> None:
        for release in self._releases:
            release()
        self._releases.clear()


def context_of(request: Request) -> RequestContext:
    context: RequestContext = request.scope[_SCOPE_KEY]
    return context


class Edge:
    def __init__(self, app: ASGIApp, streams: sse.StreamSlots) -> None:
        self.app = app
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(_request_id(scope), self.streams, _traceparent(scope))
        scope[_SCOPE_KEY] = context
        id_header = (_HEADER_BYTES, context.id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s (%s %s) failed", context.id, scope["method"], scope["path"])
            if started:
                raise  # nothing left to answer with: the connection ends unfinished
            await errors.respond(scope["path"], errors.internal(context.id))(
                scope, receive, send_with_id)
        finally:
            context.release()


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == _HEADER_BYTES and _CLIENT_ID.fullmatch(value):
            return bytes(value).decode()
    return protocol.new_task_id()


def _traceparent(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _TRACEPARENT and len(value) <= _TRACEPARENT_MAX:
            return bytes(value).decode("latin-1")
    return None
