"""What a request may cost before it runs: the reservation that admission checks and holds.

The prompt is estimated at one token per four characters of its text (OpenAI's rule of thumb;
the worker's real count settles it later), the output at the request's ``max_tokens`` or, when it
gives none, ``DEFAULT_OUTPUT_TOKENS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from uplion import schemas

DEFAULT_OUTPUT_TOKENS = 256
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Estimate:
    prompt_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens


def _tokens(text: str | bytes) -> int:
    return len(text) // _CHARS_PER_TOKEN + 1


def chat(body: schemas.ChatRequest) -> Estimate:
    prompt = sum(_tokens(schemas.content_text(message.content)) + 4 for message in body.messages)
    output = body.max_completion_tokens or body.max_tokens or DEFAULT_OUTPUT_TOKENS
    return Estimate(prompt, output)


def completion(body: schemas.CompletionRequest) -> Estimate:
    return Estimate(_tokens(body.prompt_text), body.max_tokens)


def embedding(body: schemas.EmbeddingRequest) -> Estimate:
    return Estimate(sum(_tokens(text) for text in body.texts), 0)


def v2_infer(body: schemas.V2InferRequest) -> Estimate:
    """Texts are the elements of ``BYTES`` inputs, JSON strings or binary (``raw``)."""
    texts: list[str | bytes] = []
    for tensor in body.inputs:
        if tensor.datatype == "BYTES":
            texts.extend(
                schemas.split_bytes(tensor.raw) if tensor.raw is not None
                else [item for item in schemas.flatten(tensor.data or []) if isinstance(item, str)]
            )
    max_tokens = (body.parameters or {}).get("max_tokens")
    per_text = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else (
        DEFAULT_OUTPUT_TOKENS)
    return Estimate(sum(_tokens(text) for text in texts), per_text * max(1, len(texts)))
