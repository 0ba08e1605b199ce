"""The KServe v2 / Open Inference Protocol through tritonclient's HTTP client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests import helpers
from tests.triton import client, http

__all__ = ["client", "http"]  # the fixtures of these tests


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("v2")) as running:
        yield running


def _texts(name: str, texts: list[str]) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=False)
    return tensor


def test_health(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "uplion"


def test_model_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("echo")
    assert metadata["name"] == "echo"
    assert metadata["versions"] == ["1", "2"]
    assert metadata["inputs"][0] == {"name": "text_input", "datatype": "BYTES", "shape": [-1]}
    assert client.is_model_ready("echo")
    assert client.is_model_ready("echo", model_version="2")
    assert client.get_model_metadata("echo-embed")["outputs"][0]["datatype"] == "FP32"


def test_infer_bytes_in_bytes_out(client: triton.InferenceServerClient) -> None:
    result = client.infer(
        "echo", [_texts("text_input", ["hello world", "second one here"])],
        outputs=[triton.InferRequestedOutput("text_output", binary_data=False)],
        request_id="req-1",
    )
    texts = [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy("text_output")]
    assert texts == ["hello world", "second one here"]
    response = result.get_response()
    assert response["model_name"] == "echo"
    assert response["model_version"] == "1"
    assert response["id"] == "req-1"


def test_infer_on_a_version(client: triton.InferenceServerClient) -> None:
    result = client.infer("echo", [_texts("text_input", ["v two"])], model_version="2")
    assert result.get_response()["model_version"] == "2"


def test_infer_embedding_model_returns_fp32_matrix(client: triton.InferenceServerClient) -> None:
    result = client.infer("echo-embed", [_texts("text", ["a", "b", "c"])])
    matrix = result.as_numpy("embedding")
    assert matrix is not None
    assert matrix.shape == (3, 8)
    assert matrix.dtype == np.float32


def test_unknown_model_is_an_error(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="not found"):
        client.get_model_metadata("missing")
    assert not client.is_model_ready("missing")


def test_shape_mismatch_is_400_with_v2_error(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "text_input", "shape": [3], "datatype": "BYTES", "data": ["x"]}]}
    response = http.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 400
    assert "3 elements" in response.json()["error"]


def test_bad_datatype_is_400_naming_the_field(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "t", "shape": [1], "datatype": "TEXT", "data": ["x"]}]}
    response = http.post("/v2/models/echo/infer", json=body)
    assert response.status_code == 400
    assert "inputs[0].datatype" in response.json()["error"]
