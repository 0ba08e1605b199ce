"""``test-echo``: a deterministic engine for protocol tests and benchmarks. Never a default.

It answers chat and completions by echoing the last user text word by word (one delta per word,
so streaming is observable), embeds text as a fixed-size vector of character statistics and
classifies text as ``long`` or ``short`` by its word count. An optional per-token delay makes slow
or cancellable requests reproducible in tests.

With ``tensors`` it serves KServe v2 tensors instead, for protocol tests: ``identity`` declares
the inputs ``TENSOR_INPUTS`` and answers ``y = 2 * x`` and every other input unchanged under its
own name; ``any`` declares no tensors and answers every input unchanged under its own name, so
every datatype can make the round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from uplion import protocol, schemas
from uplion.worker.engines import base

if TYPE_CHECKING:
    import numpy as np

_DIMENSIONS = 8

TENSOR_MODES = ("", "identity", "any")

TENSOR_INPUTS = [
    base.TensorSpec("x", "FP32", [-1, 3]),
    base.TensorSpec("ids", "INT64", [-1]),
    base.TensorSpec("flags", "BOOL", [-1]),
    base.TensorSpec("names", "BYTES", [-1]),
]
TENSOR_OUTPUTS = [
    base.TensorSpec("y", "FP32", [-1, 3]),
    *TENSOR_INPUTS[1:],
]


class EchoEngine(base.Engine):
    def __init__(self, token_delay_s: float = 0.0, tensors: str = "") -> None:
        if tensors not in TENSOR_MODES:
            raise ValueError(
                f"engine 'test-echo': option 'tensors' must be identity or any, not {tensors!r}"
            )
        self.token_delay_s = token_delay_s
        self.info = base.EngineInfo(
            platform="uplion-test-echo", context_length=4096, embedding_dimensions=_DIMENSIONS
        )
        if tensors:
            self.info.serves = "tensor"
        if tensors == "identity":
            self.info.inputs, self.info.outputs = list(TENSOR_INPUTS), list(TENSOR_OUTPUTS)

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

    async def classify(self, texts: list[str]) -> base.Classification:
        labels = []
        for text in texts:
            words = len(text.split())
            long = words / (words + 1)
            labels.append(sorted([("long", long), ("short", 1 - long)], key=lambda x: -x[1]))
        return base.Classification(labels, sum(len(text.split()) for text in texts))

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        answers = dict(inputs)
        if self.info.inputs:
            answers["y"] = answers.pop("x") * 2
        return answers

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
