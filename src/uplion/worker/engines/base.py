"""The small interface every engine implements, whatever runs the model.

Engines see plain inputs (messages, a prompt, texts) and yield text deltas or vectors; the worker
turns them into protocol-shaped replies. A method an engine does not support raises
``Unsupported``, which the client sees as a 400 naming the model.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from uplion import protocol
from uplion.models.spec import Serves

if TYPE_CHECKING:
    import numpy as np


class Unsupported(Exception):
    """The engine does not serve this kind of request."""


class Unrecoverable(Exception):
    """The engine cannot serve at all until its configuration is fixed (bad config, every
    upstream key invalid). The worker reports the model Failed and stops taking tasks, instead of
    failing each request slowly. ``reason`` is a short CamelCase word (``InvalidConfig``,
    ``AllAccountsUnauthorized``), ``message`` says what to fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """How the engine fares now: ``degraded`` when part of it is down (some upstream accounts)."""

    state: Literal["ok", "degraded"] = "ok"
    message: str | None = None


class EngineError(Exception):
    """A request failed inside the engine; carries an OpenAI-style error for the client."""

    def __init__(self, error: protocol.ErrorInfo) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of generated text. The last delta carries ``finish_reason`` and ``usage``."""

    text: str
    finish_reason: str | None = None
    usage: protocol.Usage | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """A vector per text; ``prompt_tokens`` over all texts, ``text_tokens`` each text's own
    (given by engines that batch, so that each request of a batch counts its own tokens)."""

    vectors: list[list[float]]
    prompt_tokens: int
    text_tokens: list[int] | None = None


@dataclass(frozen=True, slots=True)
class Classification:
    """Labels and scores for each text, best first; ``prompt_tokens`` over all texts,
    ``text_tokens`` as for ``Embeddings``."""

    labels: list[list[tuple[str, float]]]
    prompt_tokens: int
    text_tokens: list[int] | None = None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named, typed v2 tensor; ``-1`` in ``shape`` is a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class Artifact:
    """What an engine loads: the fetched model (a folder or a file, ``None`` for engines with no
    artifact), the device asked for (``auto``, ``cpu``, ``cuda``, ``cuda:N``) and whether
    pickles may be loaded."""

    path: Path | None = None
    device: str = "auto"
    trust_pickle: bool = False


@dataclass(slots=True)
class EngineInfo:
    """What the engine tells the gateway about itself, from the artifact: what it serves, the
    device it runs on, its v2 tensors (metadata and request checks), context size."""

    platform: str
    serves: Serves | None = None
    device: str = "cpu"
    context_length: int | None = None
    embedding_dimensions: int | None = None
    max_concurrency: int | None = None
    """The most requests the engine holds at once (its memory bound; ``None``: no bound of its
    own): a worker takes no more, whatever its model's ``concurrency``."""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


Batchable = Literal["embed", "classify", "infer"]
"""A call that can serve several requests at once: ``embed`` and ``classify`` with the texts of
all joined (each text's tokens counted in ``text_tokens``), ``infer`` with inputs joined along
their first dimension (every output's first dimension then is the rows')."""


class Engine(abc.ABC):
    """A loaded model. ``load`` may block for seconds; workers call it once before taking tasks."""

    info: EngineInfo

    def batchable(self) -> frozenset[Batchable]:
        """The calls the worker may give several requests' inputs at once (asked after load)."""
        return frozenset()

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def health(self) -> EngineHealth:
        """Polled by the worker for its heartbeat; raise ``Unrecoverable`` when nothing works."""
        return EngineHealth()

    def chat(
        self, messages: list[dict[str, Any]], params: GenerationParams
    ) -> AsyncIterator[TextDelta]:
        raise Unsupported("chat completions")

    def complete(self, prompt: str, params: GenerationParams) -> AsyncIterator[TextDelta]:
        raise Unsupported("completions")

    async def embed(self, texts: list[str]) -> Embeddings:
        raise Unsupported("embeddings")

    async def classify(self, texts: list[str]) -> Classification:
        raise Unsupported("classification")

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Numeric tensors in, tensors out (KServe v2). ``inputs`` are checked against
        ``info.inputs`` by the caller; ``outputs`` names those asked for (empty: all)."""
        raise Unsupported("tensor inference")
