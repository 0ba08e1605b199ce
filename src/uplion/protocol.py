"""The wire contract between gateway and worker: a task goes out, reply chunks come back.

A task names the model topic it was published to, the protocol of the request, the payload as
the client sent it (validated by the gateway), a deadline (Unix seconds), the gateway's reply
address and ``max_tokens``: the most tokens the worker may generate (per text for v2), which the
gateway reserved. A reply is a sequence of chunks for that task, ending with exactly one terminal
chunk: ``final`` (carries usage) or ``error`` (carries an OpenAI-style error). A worker that
stops a task because its client cancelled it ends the reply with an ``error`` chunk (code
``client_cancelled``, status 499) whose usage is what it produced until then, for billing.

Chunks carry ``delivery`` (who is answering), ``attempt`` (which delivery of the task by the
broker's count) and ``seq`` (position in that delivery's answer) so that the gateway can
recognise a task redelivered after a worker died, never forward a chunk twice and notice chunks
lost on the way. Messages are encoded with msgspec (JSON): fast, and typed on decode.
"""

from __future__ import annotations

import itertools
import time
import uuid
from enum import StrEnum
from typing import Any, Literal

import msgspec


class Protocol(StrEnum):
    """The kind of request a task carries; the worker dispatches on it."""

    OPENAI_CHAT = "openai-chat"
    OPENAI_COMPLETION = "openai-completion"
    OPENAI_EMBEDDING = "openai-embedding"
    KSERVE_V2 = "kserve-v2"


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


class ErrorInfo(msgspec.Struct, frozen=True):
    """An error in OpenAI's shape, with the HTTP status the gateway should answer with."""

    message: str
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    status: int = 500


class Task(msgspec.Struct, frozen=True):
    id: str
    model: str
    version: str
    protocol: Protocol
    payload: dict[str, Any]
    stream: bool
    deadline: float
    reply_to: str
    tenant: str = ""
    created: float = 0.0
    max_tokens: int | None = None
    traceparent: str | None = None
    """The W3C ``traceparent`` the worker's spans continue (``uplion.tracing``): the gateway's
    span of the request, or the client's own when the gateway does not trace; else ``None``."""

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.deadline


ChunkKind = Literal["data", "final", "error"]


class Chunk(msgspec.Struct, frozen=True):
    """One piece of a reply; ``data`` is protocol-shaped (OpenAI choices, embeddings, outputs)."""

    task_id: str
    delivery: str
    seq: int
    kind: ChunkKind
    data: dict[str, Any] | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    queue_wait_s: float | None = None
    attempt: int = 0
    engine_s: float | None = None
    """On a terminal chunk: the seconds its worker spent answering (from taking the task)."""

    @property
    def terminal(self) -> bool:
        return self.kind != "data"


CANCEL_REPORT_GRACE_S = 2.0
"""How long a gateway whose client left waits for the worker's report of what it produced (the
``client_cancelled`` chunk) before it bills what it knows; a worker tries that long to send it."""


WorkerState = Literal["starting", "running", "degraded", "failed", "stopped"]


class TensorInfo(msgspec.Struct, frozen=True, array_like=True):
    """A KServe v2 tensor of a model: name, datatype and shape (``-1``: a dimension of any size).
    Sent as ``[name, datatype, shape]`` to keep heartbeats small."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class ModelInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a worker's loaded model says about itself, from its artifact: what it serves, where
    it runs, its engine's platform, its v2 input and output tensors and its context length."""

    serves: str | None = None
    device: str = "cpu"
    platform: str = ""
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    context_length: int | None = None
    """Tokens the model attends to (prompt and output together), when its artifact says."""


class WorkerStatus(msgspec.Struct, frozen=True):
    """A worker's heartbeat: what it serves and how it fares. Sent every few seconds and on
    every change; ``failed`` carries the reason (``InvalidConfig``) and what to fix. ``info``
    describes the loaded model (absent when no model could be loaded)."""

    worker: str
    model: str
    version: str
    state: WorkerState
    slots: int
    busy: int
    at: float
    started: float = 0.0
    reason: str | None = None
    message: str | None = None
    info: ModelInfo | None = None


_task_encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(Task)
_chunk_decoder = msgspec.json.Decoder(Chunk)


_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count()


def new_task_id() -> str:
    """Unique across processes: a random per-process prefix and a counter (no syscall per id)."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


_status_decoder = msgspec.json.Decoder(WorkerStatus)


def decode_status(raw: bytes) -> WorkerStatus:
    return _status_decoder.decode(raw)


def encode(message: Task | Chunk | WorkerStatus) -> bytes:
    return _task_encoder.encode(message)


def decode_task(raw: bytes) -> Task:
    return _task_decoder.decode(raw)


def decode_chunk(raw: bytes) -> Chunk:
    return _chunk_decoder.decode(raw)


WORKER_GROUP = "workers"
"""The consumer group that all workers of a topic share."""


def topic_for(model: str, version: str) -> str:
    """The queue topic of a model version: ``model.<name>@<version>``."""
    return f"model.{model}@{version}"
