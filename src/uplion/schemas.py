"""Request bodies of the OpenAI and KServe v2 APIs, as typed msgspec structs.

The gateway validates each body against these before it becomes a task (a bad field is a 400
naming it); the worker reads the same payload with the same types. Unknown fields are kept in
the raw payload and ignored here, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Stop = str | list[str] | None


class InvalidRequest(Exception):
    """A body that breaks the schema; ``param`` is the JSON path of the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatMessage(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


def content_text(content: str | list[dict[str, Any]] | None) -> str:
    """A message's text: OpenAI content is a string or a list of parts (text parts count)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class ChatRequest(msgspec.Struct):
    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    stop: Stop = None
    seed: int | None = None
    user: str | None = None


class CompletionRequest(msgspec.Struct):
    model: str
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=0)] = 16
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    stop: Stop = None
    seed: int | None = None
    echo: bool = False
    user: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("only one prompt per request is supported")

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | Annotated[list[str], msgspec.Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


V2Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]


class V2Tensor(msgspec.Struct):
    name: str
    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    datatype: V2Datatype
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2RequestedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(msgspec.Struct):
    inputs: Annotated[list[V2Tensor], msgspec.Meta(min_length=1)]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2RequestedOutput] | None = None

    def __post_init__(self) -> None:
        for index, tensor in enumerate(self.inputs):
            elements = math.prod(tensor.shape)
            if len(flatten(tensor.data)) != elements:
                raise ValueError(
                    f"input {tensor.name!r} (inputs[{index}]) has shape {tensor.shape} "
                    f"({elements} elements) but {len(flatten(tensor.data))} data elements"
                )


def flatten(data: list[Any]) -> list[Any]:
    """v2 tensor data may be nested row-major lists; the flat list is what counts."""
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(flatten(item) if isinstance(item, list) else [item])
    return flat


T = TypeVar("T")

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def parse(payload: dict[str, Any], schema: type[T]) -> T:
    """Validate a decoded JSON body; raise ``InvalidRequest`` naming the bad field."""
    try:
        return msgspec.convert(payload, schema)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        if match is None:
            raise InvalidRequest(text) from None
        param = match.group("path") or None
        message = text[: match.start()]
        if param is not None:
            message = f"Invalid value for '{param}': {message}"
        raise InvalidRequest(message, param) from None


def decode_body(body: bytes) -> dict[str, Any]:
    """A JSON object from the request body, or ``InvalidRequest``."""
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return payload
