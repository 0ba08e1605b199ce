"""One `uplion run` (memory broker) serving test-echo models over KServe v2, for every test here:
tensor models (`tensors: identity` declares typed inputs, `tensors: any` echoes whatever comes),
a classifier and the text models, called with the real `tritonclient` and with raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import helpers
from tests.triton import client, http

__all__ = ["client", "http"]  # the fixtures of these tests

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
