"""What one request may ask of the gateway beyond what the body schemas bound: the body's size,
open streams per token, and output tokens within the model's context.

The body's size is checked before a handler reads it: a declared ``Content-Length`` over the
limit is answered 413 at once (unread), and a body without one is counted as it arrives. ``/v2``
takes larger bodies than the JSON APIs, for binary tensors. The fields of a body are bounded by
its schema (``uplion.schemas``); the model's context is known from its workers' heartbeats, and
a request for more output tokens than it holds is refused before it is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from uplion import config, protocol, schemas
from uplion.gateway import errors


@dataclass(frozen=True, slots=True)
class Limits:
    body_bytes: int = 16 * 1024 * 1024
    v2_body_bytes: int = 64 * 1024 * 1024
    streams_per_token: int = 64

    @classmethod
    def from_settings(cls, settings: config.Settings) -> Limits:
        return cls(settings.max_body_bytes, settings.max_v2_body_bytes,
                   settings.streams_per_token)

    def body_bytes_for(self, path: str) -> int:
        return self.v2_body_bytes if path.startswith("/v2/") else self.body_bytes


class BodyLimit:
    """413 for a body over its path's limit, declared or counted."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.body_bytes_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await errors.respond(scope["path"], errors.too_large(limit).error)(
                scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise errors.too_large(limit)
            return message

        await self.app(scope, counted, send)


def check_max_tokens(info: protocol.ModelInfo | None, model: str, body: Any) -> None:
    """400 ``context_length_exceeded`` when the request asks for more output tokens than the
    model's context holds (when its workers have said how many that is)."""
    context = None if info is None else info.context_length
    if context is None:
        return
    param, asked = _asked_tokens(body)
    if asked is not None and asked > context:
        raise errors.invalid_request(
            f"The model `{model}` has a context of {context} tokens (prompt and output "
            f"together), but {param} asks for {asked}.",
            param=param, code="context_length_exceeded",
        )


def _asked_tokens(body: Any) -> tuple[str, int | None]:
    if isinstance(body, schemas.ChatRequest) and body.max_completion_tokens is not None:
        return "max_completion_tokens", body.max_completion_tokens
    if isinstance(body, schemas.ChatRequest | schemas.CompletionRequest):
        return "max_tokens", body.max_tokens
    if isinstance(body, schemas.V2InferRequest):  # the first BYTES input's, else the request's
        texts = next((t for t in body.inputs if t.datatype == "BYTES"), None)
        options = {**(body.parameters or {}), **((texts.parameters or {}) if texts else {})}
        asked = options.get("max_tokens")
        return "parameters.max_tokens", asked if type(asked) is int else None
    return "max_tokens", None
