"""The floor for bench/overhead.py: a bare ASGI app that answers the same JSON directly."""

from __future__ import annotations

import time
from typing import Any

import msgspec

_BODY = msgspec.json.encode({
    "id": "chatcmpl-floor", "object": "chat.completion", "created": int(time.time()),
    "model": "echo", "system_fingerprint": None,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
})
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
