"""The KServe v2 binary tensor data extension, both ways, without numpy.

Request: with an ``Inference-Header-Content-Length`` header, the body is that many bytes of JSON
followed by the inputs' raw bytes, in input order, each input claiming
``parameters.binary_data_size`` of them. The gateway checks every size against the input's shape
and datatype and moves each input's bytes into its ``raw`` field in the task's payload (base64
in the task's JSON), so that the worker reads them with ``numpy.frombuffer``.

Response: when any output comes back from the worker as ``raw`` bytes, the answer is the JSON
header (those outputs carry ``parameters.binary_data_size`` instead of ``data``) followed by
their bytes in output order, with ``Inference-Header-Content-Length`` and
``Content-Type: application/octet-stream``; otherwise it is plain JSON.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from uplion import schemas

HEADER = "inference-header-content-length"

_encode = msgspec.json.Encoder().encode


def read_request(
    header_length: str | None, body: bytes
) -> tuple[dict[str, Any], schemas.V2InferRequest]:
    """The task payload and the validated request from an infer body, JSON or binary;
    ``schemas.InvalidRequest`` naming the bad tensor or size."""
    binary = b""
    if header_length is not None:
        length = _header_length(header_length, len(body))
        body, binary = body[:length], body[length:]
    payload = schemas.decode_body(body)
    request = schemas.parse(payload, schemas.V2InferRequest)
    offset = 0
    for index, tensor in enumerate(request.inputs):
        if tensor.raw is not None:
            raise schemas.InvalidRequest(
                f"input {tensor.name!r}: 'raw' is not a v2 field; send 'data', or binary data "
                "with parameters.binary_data_size", f"inputs[{index}].raw",
            )
        size = tensor.binary_data_size
        if size is None:
            continue
        if offset + size > len(binary):
            raise schemas.InvalidRequest(
                f"input {tensor.name!r} declares binary_data_size {size} but only "
                f"{len(binary) - offset} bytes of binary data remain after the JSON header "
                f"(Inference-Header-Content-Length: {header_length})",
                f"inputs[{index}].parameters.binary_data_size",
            )
        tensor.raw = binary[offset:offset + size]
        offset += size
        try:
            schemas.check_raw(tensor)
        except ValueError as exc:
            raise schemas.InvalidRequest(str(exc), f"inputs[{index}]") from None
        payload["inputs"][index]["raw"] = tensor.raw
    if offset != len(binary):
        raise schemas.InvalidRequest(
            f"the request has {len(binary) - offset} bytes of binary data that no input claims "
            "(the inputs' binary_data_size add up to less than the body after the JSON header)"
        )
    return payload, request


def _header_length(value: str, body_length: int) -> int:
    length = int(value) if value.isdigit() else -1
    if not 0 < length <= body_length:
        raise schemas.InvalidRequest(
            f"Inference-Header-Content-Length is {value!r}: it must be the length of the JSON "
            f"header, a whole number from 1 to the body's {body_length} bytes"
        )
    return length


def respond(
    envelope: dict[str, Any], outputs: list[dict[str, Any]], headers: dict[str, str]
) -> Response:
    """The infer response: ``envelope`` (model, id, parameters) with the worker's ``outputs``,
    as JSON or, when any output is binary, in the binary extension's layout."""
    tensors = msgspec.convert(outputs, list[schemas.V2OutputTensor])
    shown: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in tensors:
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                "shape": tensor.shape}
        if tensor.raw is not None:
            item["parameters"] = {"binary_data_size": len(tensor.raw)}
            blobs.append(tensor.raw)
        else:
            item["data"] = tensor.data if tensor.data is not None else []
        shown.append(item)
    header = _encode({**envelope, "outputs": shown})
    if not blobs:
        return Response(header, headers=headers, media_type="application/json")
    return Response(
        b"".join([header, *blobs]), media_type="application/octet-stream",
        headers={**headers, HEADER: str(len(header))},
    )
