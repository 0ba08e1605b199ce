"""One `uplion run` (memory broker) serving test-echo models over KServe v2, for every test here:
tensor models (`tensors: identity` declares typed inputs, `tensors: any` echoes whatever comes),
a classifier and the text models, called with the real `tritonclient` and with raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import tritonclient.http as triton
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient._request import Request

from tests import helpers

MODELS = """\
models:
  - name: tensors
    engine: {kind: test-echo, options: {tensors: identity}}
    request_timeout_s: 10
  - name: any-tensors
    engine: {kind: test-echo, options: {tensors: any}}
    request_timeout_s: 10
  - name: labels
    serves: classification
    engine: {kind: test-echo}
    request_timeout_s: 10
  - name: echo
    serves: text-generation
    engine: {kind: test-echo}
    request_timeout_s: 10
  - name: echo-embed
    serves: embedding
    engine: {kind: test-echo}
    request_timeout_s: 10
"""


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    tmp = tmp_path_factory.mktemp("v2-tensors")
    models = tmp / "models.yaml"
    models.write_text(MODELS)
    with helpers.platform(tmp, models=models) as running:
        yield running


@pytest.fixture
def http(served: helpers.Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=served.headers, timeout=10) as instance:
        yield instance


@pytest.fixture
def client(served: helpers.Served) -> Iterator[triton.InferenceServerClient]:
    instance = triton.InferenceServerClient(served.url.removeprefix("http://"))
    instance.register_plugin(_BearerToken(served.admin_token or ""))
    yield instance
    instance.close()


class _BearerToken(InferenceServerClientPlugin):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: Request) -> None:
        request.headers["Authorization"] = f"Bearer {self.token}"
