"""Request bodies of the OpenAI and KServe v2 APIs, as typed msgspec structs.

The gateway validates each body against these before it becomes a task (a bad field is a 400
naming it); the worker reads the same payload with the same types. Unknown fields are kept in
the raw payload and ignored here, as OpenAI-compatible servers do.

Every list and identifier has a bound (the ``MAX_*`` constants, listed in docs/api.md), and so
does the nesting of a body (``MAX_JSON_DEPTH``), so that what a request may make the gateway and
the worker do is bounded by more than the body's size. Texts are bounded by the body's size.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Annotated, Any, Literal, TypeVar

import msgspec

MAX_JSON_DEPTH = 64
"""Arrays and objects one inside the other, the body itself counting as one."""
MAX_NAME = 256
"""Characters of an identifier: a model, a name, a user, a stop sequence, a tensor."""
MAX_MESSAGES = 2048
MAX_CONTENT_PARTS = 256
MAX_INPUTS = 2048
"""Texts of one embeddings request (OpenAI's limit)."""
MAX_STOP = 4
"""Stop sequences of one request (OpenAI's limit)."""
MAX_TOKENS = 1 << 20
"""The most tokens a request may ask for, whatever the model (its context is checked too)."""
MAX_TENSORS = 256
"""Inputs, or requested outputs, of one v2 request."""
MAX_TENSOR_RANK = 32
MAX_TENSOR_ELEMENTS = 1 << 24
"""Elements of one v2 tensor: the product of its shape."""

Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
TokenCount = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Stop = Name | Annotated[list[Name], msgspec.Meta(max_length=MAX_STOP)] | None


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
    content: str | Annotated[
        list[dict[str, Any]], msgspec.Meta(max_length=MAX_CONTENT_PARTS)
    ] | None = None
    name: Name | None = None


def content_text(content: str | list[dict[str, Any]] | None) -> str:
    """A message's text: OpenAI content is a string or a list of parts (text parts count)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class ChatRequest(msgspec.Struct):
    model: Name
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    stop: Stop = None
    seed: int | None = None
    user: Name | None = None


class CompletionRequest(msgspec.Struct):
    model: Name
    prompt: str | list[str]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)] = 16
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    stop: Stop = None
    seed: int | None = None
    echo: bool = False
    user: Name | None = None

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("only one prompt per request is supported")

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class EmbeddingRequest(msgspec.Struct):
    model: Name
    input: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=65536)] | None = None
    user: Name | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


V2Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]

V2_ITEM_BYTES: dict[str, int] = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8,
}
"""Bytes per element of each fixed-size datatype in the binary tensor data extension (row-major,
little-endian). A ``BYTES`` element is a 4-byte little-endian length followed by that many bytes."""

V2_TEXT_TENSORS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "text-generation": (
        [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}],
        [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
    ),
    "embedding": (
        [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        [{"name": "embedding", "datatype": "FP32", "shape": [-1, -1]}],
    ),
    "classification": (
        [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        [{"name": "label", "datatype": "BYTES", "shape": [-1]},
         {"name": "score", "datatype": "FP32", "shape": [-1]}],
    ),
}
"""The v2 inputs and outputs of text models by what they serve, unless the engine names its own."""

_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


class V2Tensor(msgspec.Struct):
    """An input tensor. Its elements are JSON ``data`` (row-major, flat or nested) or binary: the
    client sends ``parameters.binary_data_size`` and the bytes after the JSON header, and the
    gateway moves those bytes into ``raw`` (base64 in the task's JSON). Clients never set ``raw``.
    """

    name: Name
    shape: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(
        max_length=MAX_TENSOR_RANK)]
    datatype: V2Datatype
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None
    raw: bytes | None = None

    def __post_init__(self) -> None:
        _no_shared_memory(f"input {self.name!r}", self.parameters)
        _bounded_max_tokens(f"input {self.name!r}: parameters.max_tokens", self.parameters)
        elements = math.prod(self.shape)
        if elements > MAX_TENSOR_ELEMENTS:
            raise ValueError(
                f"input {self.name!r} has shape {self.shape}: {elements} elements, over the "
                f"limit of {MAX_TENSOR_ELEMENTS} elements per tensor"
            )
        size = (self.parameters or {}).get("binary_data_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(
                f"input {self.name!r}: binary_data_size must be an integer >= 0, not {size!r}"
            )
        if self.raw is not None:
            check_raw(self)
        elif self.data is not None:
            if size is not None:
                raise ValueError(f"input {self.name!r} has both data and binary_data_size")
            count = len(flatten(self.data))
            if count != elements:
                raise ValueError(
                    f"input {self.name!r} has shape {self.shape} ({elements} elements) "
                    f"but {count} data elements"
                )
        elif size is None:
            raise ValueError(
                f"input {self.name!r} has no data: send 'data' or binary data "
                "(parameters.binary_data_size)"
            )

    @property
    def binary_data_size(self) -> int | None:
        """How many bytes of the request's binary part are this tensor's; ``None``: JSON data."""
        size = (self.parameters or {}).get("binary_data_size")
        return size if isinstance(size, int) else None


class V2RequestedOutput(msgspec.Struct):
    name: Name
    parameters: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        params = self.parameters or {}
        _no_shared_memory(f"output {self.name!r}", params)
        if params.get("classification"):
            raise ValueError(
                f"output {self.name!r}: the classification extension is not supported"
            )
        if not isinstance(params.get("binary_data", False), bool):
            raise ValueError(f"output {self.name!r}: binary_data must be true or false")

    @property
    def binary_data(self) -> bool | None:
        value = (self.parameters or {}).get("binary_data")
        return value if isinstance(value, bool) else None


class V2InferRequest(msgspec.Struct):
    inputs: Annotated[list[V2Tensor], msgspec.Meta(min_length=1, max_length=MAX_TENSORS)]
    id: Name | None = None
    parameters: dict[str, Any] | None = None
    outputs: Annotated[list[V2RequestedOutput], msgspec.Meta(max_length=MAX_TENSORS)] | None = None

    def __post_init__(self) -> None:
        if not isinstance((self.parameters or {}).get("binary_data_output", False), bool):
            raise ValueError("parameters.binary_data_output must be true or false")
        _bounded_max_tokens("parameters.max_tokens", self.parameters)
        for kind, names in (("input", [t.name for t in self.inputs]),
                            ("output", [o.name for o in self.outputs or []])):
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(f"{kind} {twice[0]!r} is given more than once")

    def binary_output(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data: its own ``binary_data`` parameter,
        else the request's ``binary_data_output`` (what tritonclient sends by default)."""
        for output in self.outputs or []:
            if output.name == name and output.binary_data is not None:
                return output.binary_data
        return bool((self.parameters or {}).get("binary_data_output", False))


class V2OutputTensor(msgspec.Struct):
    """An output tensor as a worker answers it: JSON ``data`` (flat, row-major) or ``raw`` bytes
    in the binary extension's layout (base64 in the reply's JSON) that the gateway sends as
    binary data."""

    name: str
    datatype: V2Datatype
    shape: list[int]
    data: list[Any] | None = None
    raw: bytes | None = None


def check_raw(tensor: V2Tensor) -> None:
    """``ValueError`` unless ``tensor.raw`` holds exactly its shape's elements of its datatype."""
    raw = tensor.raw or b""
    elements = math.prod(tensor.shape)
    if tensor.datatype == "BYTES":
        try:
            count = len(split_bytes(raw))
        except ValueError as exc:
            raise ValueError(f"input {tensor.name!r}: {exc}") from None
        if count != elements:
            raise ValueError(
                f"input {tensor.name!r} has shape {tensor.shape} ({elements} elements) "
                f"but its binary data holds {count} BYTES elements"
            )
        return
    expected = elements * V2_ITEM_BYTES[tensor.datatype]
    if len(raw) != expected:
        raise ValueError(
            f"input {tensor.name!r} has shape {tensor.shape} of {tensor.datatype} "
            f"({expected} bytes) but {len(raw)} bytes of binary data"
        )


def split_bytes(raw: bytes) -> list[bytes]:
    """The elements of a ``BYTES`` tensor in the binary layout (4-byte little-endian length,
    then the bytes); ``ValueError`` when the lengths do not add up to ``raw``."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError(f"BYTES element {len(items)}'s 4-byte length is cut short")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ValueError(
                f"BYTES element {len(items)} declares {size} bytes but "
                f"{len(raw) - offset} remain"
            )
        items.append(raw[offset:offset + size])
        offset += size
    return items


def join_bytes(items: list[bytes]) -> bytes:
    """``BYTES`` elements in the binary layout: each a 4-byte little-endian length, then it."""
    return b"".join(_LENGTH.pack(len(item)) + item for item in items)


_LENGTH = struct.Struct("<I")


def _bounded_max_tokens(what: str, parameters: dict[str, Any] | None) -> None:
    asked = (parameters or {}).get("max_tokens")
    if type(asked) is int and asked > MAX_TOKENS:
        raise ValueError(f"{what} is {asked}, over the limit of {MAX_TOKENS}")


def _no_shared_memory(what: str, parameters: dict[str, Any] | None) -> None:
    if any(key in (parameters or {}) for key in _SHARED_MEMORY):
        raise ValueError(
            f"{what}: the shared memory extension is not supported; send the data in the body"
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


def decode_json(body: bytes) -> Any:
    """Decoded JSON: ``msgspec.DecodeError`` when it is not JSON, ``InvalidRequest`` when it is
    nested deeper than ``MAX_JSON_DEPTH`` (the decoder's own bound, the interpreter's recursion
    limit, is neither small nor the same in every process that reads a task)."""
    try:
        payload = msgspec.json.decode(body)
    except RecursionError:
        raise _too_deep() from None
    if _deeper_than(payload, MAX_JSON_DEPTH):
        raise _too_deep()
    return payload


def decode_body(body: bytes) -> dict[str, Any]:
    """A JSON object from the request body, or ``InvalidRequest``."""
    try:
        payload = decode_json(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return payload


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The request body is nested more than {MAX_JSON_DEPTH} levels deep (arrays and objects "
        "one inside the other)."
    )


_CONTAINERS = frozenset({list, dict})


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` levels, walked level by level; the types of
    a level's items are read in C (``map(type, ...)``), so long flat arrays cost little."""
    level = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        inner: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            if not _CONTAINERS.isdisjoint(map(type, items)):
                inner.extend(item for item in items if type(item) in _CONTAINERS)
        level = inner
    return False
