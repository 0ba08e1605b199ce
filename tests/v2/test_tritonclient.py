"""KServe v2 numeric tensors through the real `tritonclient.http`, in JSON mode
(`binary_data=False`) and in its default binary mode, against test-echo tensor models."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

X = np.array([[1.5, -2.0, 3.25], [0.0, 4.0, -0.5]], dtype=np.float32)
IDS = np.array([7, -(2**63), 2**63 - 1], dtype=np.int64)
FLAGS = np.array([True, False], dtype=np.bool_)
NAMES = np.array([b"hello", "café".encode(), b""], dtype=np.object_)

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.array([[-(2**31)], [2**31 - 1]], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -1.25, 65504.0], dtype=np.float16),
    "FP32": np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=np.float32),
    "FP64": np.array([np.pi, -1e300, 5e-324], dtype=np.float64),
    "BYTES": np.array([b"a", "naïve".encode(), b""], dtype=np.object_),
}


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _identity_inputs(binary: bool) -> list[triton.InferInput]:
    return [_input("x", X, "FP32", binary), _input("ids", IDS, "INT64", binary),
            _input("flags", FLAGS, "BOOL", binary), _input("names", NAMES, "BYTES", binary)]


def _as_bytes(array: np.ndarray) -> list[bytes]:
    return [item if isinstance(item, bytes) else str(item).encode() for item in array.ravel()]


def _wait_ready(client: triton.InferenceServerClient, model: str) -> None:
    deadline = time.monotonic() + 30
    while not client.is_model_ready(model):
        assert time.monotonic() < deadline, f"{model} never became ready"
        time.sleep(0.05)


def test_metadata_comes_from_the_workers_engine(client: triton.InferenceServerClient) -> None:
    _wait_ready(client, "tensors")
    metadata = client.get_model_metadata("tensors")
    assert metadata["platform"] == "uplion-test-echo"
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "ids", "datatype": "INT64", "shape": [-1]},
        {"name": "flags", "datatype": "BOOL", "shape": [-1]},
        {"name": "names", "datatype": "BYTES", "shape": [-1]},
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["y", "ids", "flags", "names"]
    _wait_ready(client, "any-tensors")
    assert client.get_model_metadata("any-tensors")["inputs"] == []
    _wait_ready(client, "labels")
    labels = client.get_model_metadata("labels")
    assert [(o["name"], o["datatype"]) for o in labels["outputs"]] == [
        ("label", "BYTES"), ("score", "FP32")]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_identity_model_both_modes(client: triton.InferenceServerClient, binary: bool) -> None:
    requested = None if binary else [
        triton.InferRequestedOutput(name, binary_data=False)
        for name in ("y", "ids", "flags", "names")
    ]
    result = client.infer("tensors", _identity_inputs(binary), outputs=requested)
    y = result.as_numpy("y")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, X * 2)
    np.testing.assert_array_equal(result.as_numpy("ids"), IDS)
    assert result.as_numpy("ids").dtype == np.int64
    np.testing.assert_array_equal(result.as_numpy("flags"), FLAGS)
    assert _as_bytes(result.as_numpy("names")) == list(NAMES)
    outputs = result.get_response()["outputs"]
    assert all(("parameters" in o) == binary and ("data" in o) != binary for o in outputs)


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(False, False), (True, True), (False, True), (True, False)],
    ids=["json-json", "binary-binary", "json-binary", "binary-json"],
)
def test_every_datatype_round_trips(
    client: triton.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    samples = dict(SAMPLES)
    if binary_in and binary_out:  # bytes that are not UTF-8 travel only as binary data
        samples["BYTES"] = np.array([b"\xff\x00", b"ok"], dtype=np.object_)
    inputs = [_input(name.lower(), array, name, binary_in) for name, array in samples.items()]
    outputs = [triton.InferRequestedOutput(name.lower(), binary_data=binary_out)
               for name in samples]
    result = client.infer("any-tensors", inputs, outputs=outputs)
    for name, array in samples.items():
        answer = result.as_numpy(name.lower())
        assert answer.shape == array.shape, name
        if name == "BYTES":
            assert _as_bytes(answer) == list(array.ravel())
        else:
            assert answer.dtype == array.dtype, name
            np.testing.assert_array_equal(answer, array, err_msg=name)


def test_requested_outputs_mixed_binary_and_json(client: triton.InferenceServerClient) -> None:
    result = client.infer("tensors", _identity_inputs(True), outputs=[
        triton.InferRequestedOutput("flags", binary_data=False),
        triton.InferRequestedOutput("y", binary_data=True),
    ])
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["flags", "y"]
    flags, y = response["outputs"]
    assert flags["data"] == [True, False]
    assert y["parameters"] == {"binary_data_size": X.nbytes}
    np.testing.assert_array_equal(result.as_numpy("y"), X * 2)
    assert result.as_numpy("ids") is None


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classifier_answers_label_and_score(
    client: triton.InferenceServerClient, binary: bool
) -> None:
    texts = np.array([b"one two three", b""], dtype=np.object_)
    result = client.infer("labels", [_input("text", texts, "BYTES", binary)],
                          outputs=[triton.InferRequestedOutput("label", binary_data=binary),
                                   triton.InferRequestedOutput("score", binary_data=binary)])
    assert _as_bytes(result.as_numpy("label")) == [b"long", b"short"]
    np.testing.assert_allclose(result.as_numpy("score"), [0.75, 1.0])
    assert result.as_numpy("score").dtype == np.float32


def test_text_models_take_binary_bytes_with_default_settings(
    client: triton.InferenceServerClient,
) -> None:
    texts = np.array([b"hello binary world", "ünïcode".encode()], dtype=np.object_)
    generated = client.infer("echo", [_input("text_input", texts, "BYTES", True)])
    assert _as_bytes(generated.as_numpy("text_output")) == list(texts)
    embedded = client.infer("echo-embed", [_input("text", texts, "BYTES", True)])
    assert embedded.as_numpy("embedding").shape == (2, 8)
    assert embedded.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 2 * 8 * 4


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (lambda b: [*_identity_inputs(b), _input("extra", IDS, "INT64", b)],
         "unknown input 'extra'"),
        (lambda b: [_input("x", X.astype(np.float64), "FP64", b), *_identity_inputs(b)[1:]],
         "input 'x' must be FP32, not FP64"),
        (lambda b: [_input("x", np.zeros((2, 4), np.float32), "FP32", b),
                    *_identity_inputs(b)[1:]],
         "input 'x' has shape [2, 4]"),
        (lambda b: [_input("x", X.reshape(-1), "FP32", b), *_identity_inputs(b)[1:]],
         "input 'x' has shape [6]"),
        (lambda b: _identity_inputs(b)[:3], "missing input 'names'"),
    ],
    ids=["name", "datatype", "dimension", "rank", "missing"],
)
def test_bad_tensors_are_400_naming_them(
    client: triton.InferenceServerClient, binary: bool, inputs: object, message: str
) -> None:
    assert callable(inputs)
    with pytest.raises(InferenceServerException, match=re.escape(message)) as raised:
        client.infer("tensors", inputs(binary))
    assert raised.value.status() == "400"


def test_unknown_requested_output_is_400_naming_it(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown output 'z'") as raised:
        client.infer("tensors", _identity_inputs(True),
                     outputs=[triton.InferRequestedOutput("z")])
    assert raised.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown output 'nope'"):
        client.infer("any-tensors", [_input("a", IDS, "INT64", True)],
                     outputs=[triton.InferRequestedOutput("nope")])
