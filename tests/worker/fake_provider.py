"""A fake OpenAI-compatible provider on loopback, scripted per API key, for upstream engine tests.

It runs on a thread of its own (tests/threaded_server.py), so its latency never blocks the
test's loop. Each key has a ``Script``: latency, a fixed status to answer (401, 429 with
``Retry-After``, 500), a status for requests only (the key still accepted on ``/models``: a
refusal of the request, not of the key), a concurrency it enforces with 429s, a delay between
streamed chunks, a stream that breaks after some chunks, and whether a usage chunk is sent.
Keys without a script are refused with a 401. Scripts change while it runs; it counts calls and
peak concurrency per key, and notes the client ports that asked for answers (one per
connection).

Chat answers echo the last user message word by word (``max_tokens`` cuts it, finish ``length``);
completions echo the prompt; a ``temperature`` above 2 is refused with a 400, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.threaded_server import ThreadedServer


class BrokenStream(Exception):
    """Raised inside a streamed answer to cut the connection mid-answer."""


@dataclass(frozen=True)
class Script:
    latency_s: float = 0.0
    status: int | None = None
    request_status: int | None = None
    retry_after: str | None = None
    max_concurrency: int | None = None
    chunk_delay_s: float = 0.0
    break_after_chunks: int | None = None
    usage: bool = True


class FakeProvider(ThreadedServer):
    """``with FakeProvider() as provider:`` serves at ``provider.base_url`` (``.../v1``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, Script] = {}
        self.calls: Counter[str] = Counter()
        self.probes: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self._running: Counter[str] = Counter()
        self.ports: set[int] = set()
        app = Starlette(routes=[
            Route("/v1/models", self._models),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
        ])
        super().__init__(app, "fake provider")
        self.base_url = f"{self.url}/v1"

    def script(self, key: str, **changes: Any) -> None:
        """Set (or change) what ``key`` does; a new key starts from the defaults."""
        with self._lock:
            self._scripts[key] = dataclasses.replace(self._scripts.get(key, Script()), **changes)

    def forget(self, key: str) -> None:
        """The key is unknown again: refused with a 401."""
        with self._lock:
            self._scripts.pop(key, None)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.calls.clear()
            self.probes.clear()
            self.peak.clear()
            self._running.clear()
            self.ports.clear()

    # The server side, run on the server's thread.

    async def _models(self, request: Request) -> Response:
        key = _key(request)
        with self._lock:
            self.probes[key] += 1
            script = self._scripts.get(key)
        refusal = _refusal(script)
        if refusal is not None:
            return refusal
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        user = [m for m in body["messages"] if m["role"] == "user"]
        prompt = " ".join(str(m.get("content") or "") for m in body["messages"])
        return await self._answer(request, body, user[-1]["content"] if user else "", prompt,
                                  chat=True)

    async def _completions(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        return await self._answer(request, body, body["prompt"], body["prompt"], chat=False)

    async def _embeddings(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        key = _key(request)
        refusal = await self._begin(key)
        if refusal is not None:
            return refusal
        try:
            data = [{"object": "embedding", "index": index,
                     "embedding": [float(len(text)), float(len(text.split())), 0.5, -0.5]}
                    for index, text in enumerate(texts)]
            tokens = sum(len(text.split()) for text in texts)
            return JSONResponse({"object": "list", "data": data, "model": body["model"],
                                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
        finally:
            self._end(key)

    async def _answer(
        self, request: Request, body: dict[str, Any], text: str, prompt: str, chat: bool
    ) -> Response:
        key = _key(request)
        if request.client is not None:
            with self._lock:
                self.ports.add(request.client.port)
        refusal = await self._begin(key)
        if refusal is not None:
            return refusal
        if body.get("stream") is not True or float(body.get("temperature", 1.0)) > 2:
            self._end(key)
            if body.get("stream") is not True:
                return _error(400, "this fake provider only streams")
            return _error(400, "temperature must be at most 2", param="temperature")
        with self._lock:
            script = self._scripts.get(key, Script())
        words = text.split()
        limit = body.get("max_tokens") or len(words)
        produced = min(limit, len(words))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": produced,
                 "total_tokens": len(prompt.split()) + produced}
        lines = _stream(words[:limit], "length" if limit < len(words) else "stop",
                        usage if script.usage else None, chat, script)

        async def events() -> AsyncIterator[bytes]:
            try:
                async for line in lines:
                    yield line
            finally:
                self._end(key)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _begin(self, key: str) -> Response | None:
        """Count a call and apply its script: a refusal, or ``None`` (then ``_end`` it)."""
        with self._lock:
            self.calls[key] += 1
            script = self._scripts.get(key)
            if script is not None and script.max_concurrency is not None and (
                self._running[key] >= script.max_concurrency
            ):
                return _error(429, "too many concurrent requests", headers={"Retry-After": "1"})
            self._running[key] += 1
            self.peak[key] = max(self.peak[key], self._running[key])
        if script is not None and script.latency_s:
            await asyncio.sleep(script.latency_s)
        refusal = _refusal(script)
        if refusal is None and script is not None and script.request_status is not None:
            refusal = _error(script.request_status, f"scripted {script.request_status} for "
                             "this request", code="model_not_allowed")
        if refusal is not None:
            self._end(key)
        return refusal

    def _end(self, key: str) -> None:
        with self._lock:
            self._running[key] -= 1


async def _stream(
    words: list[str], finish: str, usage: dict[str, int] | None, chat: bool, script: Script
) -> AsyncIterator[bytes]:
    def event(choice: dict[str, Any] | None, **extra: Any) -> bytes:
        chunk = {"id": "fake", "object": "chat.completion.chunk" if chat else "text_completion",
                 "model": "fake-model", "choices": [] if choice is None else [choice], **extra}
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"

    def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
        if chat:
            return {"index": 0, "delta": {"content": text}, "finish_reason": finish_reason}
        return {"index": 0, "text": text, "finish_reason": finish_reason}

    if chat:
        yield event({"index": 0, "delta": {"role": "assistant", "content": ""},
                     "finish_reason": None})
    for index, word in enumerate(words):
        if script.break_after_chunks is not None and index >= script.break_after_chunks:
            raise BrokenStream
        if script.chunk_delay_s:
            await asyncio.sleep(script.chunk_delay_s)
        yield event(choice(word if index == 0 else " " + word, None))
    yield event(choice("", finish))
    if usage is not None:
        yield event(None, usage=usage)
    yield b"data: [DONE]\n\n"


def _key(request: Request) -> str:
    return request.headers.get("authorization", "").removeprefix("Bearer ")


def _refusal(script: Script | None) -> Response | None:
    if script is None:
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    if script.status is None:
        return None
    headers = {"Retry-After": script.retry_after} if script.retry_after is not None else None
    return _error(script.status, f"scripted {script.status}", headers=headers)


def _error(
    status: int, message: str, code: str | None = None, param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status_code=status, headers=headers,
    )
