"""The v2 wire format as raw HTTP: JSON data flat or nested, the binary extension's layout in
both directions, and the 400s for tensors whose data does not fit."""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
import numpy as np
import pytest

INFER = "/v2/models/tensors/infer"
ANY = "/v2/models/any-tensors/infer"


def _identity(x: list[Any]) -> dict[str, Any]:
    return {"inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x},
        {"name": "ids", "shape": [1], "datatype": "INT64", "data": [5]},
        {"name": "flags", "shape": [1], "datatype": "BOOL", "data": [True]},
        {"name": "names", "shape": [1], "datatype": "BYTES", "data": ["n"]},
    ]}


def _binary(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"}


def _error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"}
    return str(body["error"])


@pytest.mark.parametrize("x", [[[1, 2, 3], [4, 5, 6]], [1, 2, 3, 4, 5, 6]],
                         ids=["nested", "flat"])
def test_json_data_nested_or_flat_answers_flat_row_major(http: httpx.Client, x: list[Any]) -> None:
    response = http.post(INFER, json={**_identity(x), "outputs": [{"name": "y"}]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    (y,) = response.json()["outputs"]
    assert y == {"name": "y", "datatype": "FP32", "shape": [2, 3],
                 "data": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]}


def test_binary_request_and_response_layout(http: httpx.Client) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    names = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    header = {"inputs": [
        {"name": "x", "shape": [2, 3], "datatype": "FP32",
         "parameters": {"binary_data_size": x.nbytes}},
        {"name": "ids", "shape": [1], "datatype": "INT64", "data": [9]},
        {"name": "flags", "shape": [2], "datatype": "BOOL",
         "parameters": {"binary_data_size": 2}},
        {"name": "names", "shape": [2], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(names)}},
    ], "outputs": [{"name": "names", "parameters": {"binary_data": True}},
                   {"name": "y", "parameters": {"binary_data": True}},
                   {"name": "ids", "parameters": {"binary_data": False}}]}
    body, headers = _binary(header, x.tobytes(), b"\x01\x00", names)
    response = http.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.content[:length])
    assert answer["model_name"] == "tensors"
    assert answer["outputs"] == [
        {"name": "names", "datatype": "BYTES", "shape": [2],
         "parameters": {"binary_data_size": len(names)}},
        {"name": "y", "datatype": "FP32", "shape": [2, 3],
         "parameters": {"binary_data_size": x.nbytes}},
        {"name": "ids", "datatype": "INT64", "shape": [1], "data": [9]},
    ]
    assert response.content[length:] == names + (x * 2).tobytes()


def test_request_level_binary_data_output(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "h", "shape": [2], "datatype": "FP16", "data": [0.5, 2]}],
            "parameters": {"binary_data_output": True}}
    response = http.post(ANY, json=body)
    length = int(response.headers["inference-header-content-length"])
    assert response.content[length:] == np.array([0.5, 2], dtype="<f2").tobytes()


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "u", "shape": [1], "datatype": "UINT8", "data": [300]},
         "input 'u' holds a value out of the range of UINT8"),
        ({"name": "i", "shape": [2], "datatype": "INT32", "data": [1, "2"]},
         "input 'i' is INT32: its data must be integers, not strings"),
        ({"name": "i", "shape": [1], "datatype": "INT64", "data": [1.5]},
         "input 'i' is INT64: its data must be integers, not numbers"),
        ({"name": "b", "shape": [1], "datatype": "BOOL", "data": [1]},
         "input 'b' is BOOL: its data must be true/false, not integers"),
        ({"name": "s", "shape": [1], "datatype": "BYTES", "data": [3]},
         "input 's' is BYTES: its data must be strings, not integers"),
        ({"name": "f", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]},
         "input 'f' has shape [2, 2] (4 elements) but 3 data elements"),
        ({"name": "f", "shape": [1], "datatype": "BF16", "data": [1]},
         "inputs[0].datatype"),
        ({"name": "f", "shape": [1], "datatype": "FP32"},
         "input 'f' has no data"),
        ({"name": "f", "shape": [1], "datatype": "FP32", "data": [1], "raw": "AAAAAA=="},
         "input 'f': 'raw' is not a v2 field"),
        ({"name": "f", "shape": [1], "datatype": "FP32",
          "parameters": {"shared_memory_region": "r"}},
         "the shared memory extension is not supported"),
    ],
    ids=["range", "string-in-int", "float-in-int", "int-in-bool", "int-in-bytes", "count",
         "datatype", "no-data", "raw", "shared-memory"],
)
def test_bad_json_tensors_are_400_naming_them(
    http: httpx.Client, tensor: dict[str, Any], message: str
) -> None:
    assert message in _error(http.post(ANY, json={"inputs": [tensor]}))


def _fp32(size: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": "v", "shape": shape or [2], "datatype": "FP32",
            "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize(
    ("header", "blob", "message"),
    [
        ({"inputs": [_fp32(8)]}, b"\x00" * 4,
         "input 'v' declares binary_data_size 8 but only 4 bytes of binary data remain"),
        ({"inputs": [_fp32(8)]}, b"\x00" * 12, "4 bytes of binary data that no input claims"),
        ({"inputs": [_fp32(4)]}, b"\x00" * 4,
         "input 'v' has shape [2] of FP32 (8 bytes) but 4 bytes of binary data"),
        ({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                      "parameters": {"binary_data_size": 6}}]},
         struct.pack("<I", 9) + b"ab", "input 's': BYTES element 0 declares 9 bytes but 2 remain"),
        ({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES",
                      "parameters": {"binary_data_size": 5}}]},
         struct.pack("<I", 1) + b"a", "input 's' has shape [2] (2 elements) but its binary data "
         "holds 1 BYTES elements"),
        ({"inputs": [_fp32(-1)]}, b"", "binary_data_size must be an integer >= 0, not -1"),
        ({"inputs": [{**_fp32(8), "data": [1.0, 2.0]}]}, b"\x00" * 8,
         "input 'v' has both data and binary_data_size"),
    ],
    ids=["short", "left-over", "size-vs-shape", "bytes-length", "bytes-count", "negative",
         "both"],
)
def test_bad_binary_data_is_400(
    http: httpx.Client, header: dict[str, Any], blob: bytes, message: str
) -> None:
    body, headers = _binary(header, blob)
    assert message in _error(http.post(ANY, content=body, headers=headers))


@pytest.mark.parametrize("length", ["0", "x", "100000"])
def test_bad_header_length_is_400(http: httpx.Client, length: str) -> None:
    body, headers = _binary({"inputs": [_fp32(8)]}, b"\x00" * 8)
    headers["Inference-Header-Content-Length"] = length
    assert f"Inference-Header-Content-Length is '{length}'" in _error(
        http.post(ANY, content=body, headers=headers))


def test_binary_data_size_without_the_header_is_400(http: httpx.Client) -> None:
    message = _error(http.post(ANY, json={"inputs": [_fp32(8)]}))
    assert "input 'v' declares binary_data_size 8 but only 0 bytes" in message


def test_unknown_output_and_bad_output_parameters_are_400(http: httpx.Client) -> None:
    body = _identity([1, 2, 3, 4, 5, 6])
    assert "unknown output 'q'" in _error(http.post(INFER, json={**body, "outputs": [
        {"name": "y"}, {"name": "q"}]}))
    assert "binary_data must be true or false" in _error(http.post(INFER, json={
        **body, "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}))
    assert "output 'y' is given more than once" in _error(http.post(INFER, json={
        **body, "outputs": [{"name": "y"}, {"name": "y"}]}))


def test_non_utf8_bytes_cannot_be_answered_as_json(http: httpx.Client) -> None:
    blob = struct.pack("<I", 1) + b"\xff"
    body, headers = _binary({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(blob)}}]}, blob)
    message = _error(http.post(ANY, content=body, headers=headers))
    assert "output 's' holds bytes that are not UTF-8 text" in message
