"""What a request may cost before it runs: the reservation that admission checks and holds.

The prompt is estimated at one token per four characters of its text (OpenAI's rule of thumb;
the worker's real count settles it later). The output is at most ``max_tokens`` per generation:
the request's, else the model's default (its engine option ``default_max_tokens``, else
``DEFAULT_OUTPUT_TOKENS``, or ``REMOTE_OUTPUT_TOKENS`` for models served by another server,
whose answers are commonly longer). That cap travels in the task and the worker never generates past
it, so the reservation is the most a request can cost. Chat message parts that are not text
(images, audio, files) are refused: the text engines cannot see them, and nothing could count
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uplion import schemas
from uplion.models import ModelSpec

DEFAULT_OUTPUT_TOKENS = 256
REMOTE_OUTPUT_TOKENS = 4096
_REMOTE_KINDS = frozenset({"openai-upstream", "openai-server", "vllm"})
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Estimate:
    """``output_tokens`` is the most the request generates in all; ``max_tokens`` the cap of
    each generation (what the task carries; ``None`` for requests that generate nothing)."""

    prompt_tokens: int
    output_tokens: int
    max_tokens: int | None = None

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens


def _tokens(text: str | bytes) -> int:
    return len(text) // _CHARS_PER_TOKEN + 1


def default_max_tokens(spec: ModelSpec) -> int:
    """The model's own default cap: its engine's ``default_max_tokens``, else 256 (4,096 for
    remote providers and child servers)."""
    value = spec.engine.options.get("default_max_tokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return REMOTE_OUTPUT_TOKENS if spec.engine.kind in _REMOTE_KINDS else DEFAULT_OUTPUT_TOKENS


def chat(body: schemas.ChatRequest, spec: ModelSpec) -> Estimate:
    """Raises ``schemas.InvalidRequest`` (a 400) for a message part that is not text."""
    for index, message in enumerate(body.messages):
        _text_only(message.content, f"messages[{index}].content")
    prompt = sum(_tokens(schemas.content_text(message.content)) + 4 for message in body.messages)
    cap = body.max_completion_tokens or body.max_tokens or default_max_tokens(spec)
    return Estimate(prompt, cap, cap)


def _text_only(content: str | list[dict[str, Any]] | None, where: str) -> None:
    if not isinstance(content, list):
        return
    for index, part in enumerate(content):
        kind = part.get("type")
        if kind != "text":
            raise schemas.InvalidRequest(
                f"Message content parts of type {kind!r} are not supported: uplion's models "
                "read text only; send the content as text parts.", f"{where}[{index}].type",
            )


def completion(body: schemas.CompletionRequest, spec: ModelSpec) -> Estimate:
    return Estimate(_tokens(body.prompt_text), body.max_tokens, body.max_tokens)


def embedding(body: schemas.EmbeddingRequest, spec: ModelSpec) -> Estimate:
    return Estimate(sum(_tokens(text) for text in body.texts), 0)


def v2_infer(body: schemas.V2InferRequest, spec: ModelSpec) -> Estimate:
    """Texts are the elements of ``BYTES`` inputs, JSON strings or binary (``raw``). A text model
    generates for each text of its first ``BYTES`` input, up to that input's ``max_tokens``
    parameter, else the request's, else the model's default."""
    texts: list[str | bytes] = []
    for tensor in body.inputs:
        if tensor.datatype == "BYTES":
            texts.extend(
                schemas.split_bytes(tensor.raw) if tensor.raw is not None
                else [item for item in schemas.flatten(tensor.data or []) if isinstance(item, str)]
            )
    source = next((t for t in body.inputs if t.datatype == "BYTES"), None)
    options = {**(body.parameters or {}), **((source.parameters or {}) if source else {})}
    asked = options.get("max_tokens")
    cap = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else (
        default_max_tokens(spec))
    return Estimate(sum(_tokens(text) for text in texts), cap * max(1, len(texts)), cap)
