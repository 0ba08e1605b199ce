"""``test-echo``: a deterministic engine for protocol tests and benchmarks. Never a default.

It answers chat and completions by echoing the last user text word by word (one delta per word,
so streaming is observable) and embeds text as a fixed-size vector of character statistics. An
optional per-token delay makes slow or cancellable requests reproducible in tests.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from uplion import protocol, schemas
from uplion.worker.engines import base

_DIMENSIONS = 8


class EchoEngine(base.Engine):
    def __init__(self, token_delay_s: float = 0.0) -> None:
        self.token_delay_s = token_delay_s
        self.info = base.EngineInfo(
            platform="uplion-test-echo", context_length=4096, embedding_dimensions=_DIMENSIONS
        )

    def chat(
        self, messages: list[dict[str, Any]], params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        text = ""
        for message in reversed(messages):
            if message.get("role") == "user":
                text = schemas.content_text(message.get("content"))
                break
        prompt_words = sum(len(schemas.content_text(m.get("content")).split()) for m in messages)
        return self._words(text, prompt_words, params)

    def complete(self, prompt: str, params: base.GenerationParams) -> AsyncIterator[base.TextDelta]:
        return self._words(prompt, len(prompt.split()), params)

    async def embed(self, texts: list[str]) -> base.Embeddings:
        return base.Embeddings(
            vectors=[_vector(text) for text in texts],
            prompt_tokens=sum(len(text.split()) for text in texts),
        )

    async def _words(
        self, text: str, prompt_tokens: int, params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        words = text.split()
        limit = params.max_tokens if params.max_tokens is not None else len(words)
        produced = words[:limit]
        for index, word in enumerate(produced):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            yield base.TextDelta(text=word if index == 0 else " " + word)
        finish = "length" if len(produced) < len(words) else "stop"
        usage = protocol.Usage(prompt_tokens=prompt_tokens, completion_tokens=len(produced))
        yield base.TextDelta(text="", finish_reason=finish, usage=usage)


def _vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(byte / 255.0, 6) for byte in digest[:_DIMENSIONS]]
