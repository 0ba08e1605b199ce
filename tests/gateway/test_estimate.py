"""The reservation: the prompt estimate and the most a request may generate, which the task
carries as its ``max_tokens``; content the models cannot read is refused."""

from __future__ import annotations

from typing import Any

import pytest

from uplion import schemas
from uplion.gateway import estimate
from uplion.models import EngineSpec, ModelSpec

PLAIN = ModelSpec(name="m", engine=EngineSpec(kind="test-echo"))
OWN_DEFAULT = ModelSpec(name="t", source="/models/t",
                        engine=EngineSpec(kind="transformers", options={"default_max_tokens": 64}))


def chat(**body: Any) -> schemas.ChatRequest:
    return schemas.parse({"model": "m", "messages": [{"role": "user", "content": "abcd" * 10}],
                          **body}, schemas.ChatRequest)


def test_chat_reserves_the_request_s_cap_else_the_model_s_default() -> None:
    assert estimate.chat(chat(max_tokens=10), PLAIN) == estimate.Estimate(15, 10, 10)
    assert estimate.chat(chat(max_completion_tokens=7, max_tokens=10), PLAIN).max_tokens == 7
    assert estimate.chat(chat(), PLAIN).max_tokens == estimate.DEFAULT_OUTPUT_TOKENS
    assert estimate.chat(chat(), OWN_DEFAULT) == estimate.Estimate(15, 64, 64)


def test_remote_models_default_to_a_longer_cap_their_option_overrides() -> None:
    upstream = ModelSpec(name="r", engine=EngineSpec(kind="openai-upstream", options={
        "base_url": "https://api.example.com/v1", "model": "x"}))
    assert estimate.chat(chat(), upstream).max_tokens == estimate.REMOTE_OUTPUT_TOKENS
    shorter = upstream.model_copy(update={"engine": EngineSpec(
        kind="openai-upstream", options={**upstream.engine.options, "default_max_tokens": 900})})
    assert estimate.chat(chat(), shorter).max_tokens == 900


def test_text_parts_are_counted_and_other_parts_refused() -> None:
    parts = [{"type": "text", "text": "abcd" * 10}]
    assert estimate.chat(chat(messages=[{"role": "user", "content": parts}]), PLAIN).total == (
        15 + estimate.DEFAULT_OUTPUT_TOKENS)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = chat(messages=[{"role": "system", "content": "be brief"},
                          {"role": "user", "content": [*parts, image]}])
    with pytest.raises(schemas.InvalidRequest) as caught:
        estimate.chat(body, PLAIN)
    assert caught.value.param == "messages[1].content[1].type"
    assert "'image_url'" in caught.value.message
    assert "text only" in caught.value.message


def test_v2_caps_each_text_by_its_tensor_then_the_request_then_the_model() -> None:
    def infer(tensor: dict[str, Any], request: dict[str, Any]) -> estimate.Estimate:
        payload = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2],
                               "data": ["abcd", "efgh"], **tensor}], **request}
        return estimate.v2_infer(schemas.parse(payload, schemas.V2InferRequest), OWN_DEFAULT)

    assert infer({}, {}) == estimate.Estimate(4, 128, 64)
    assert infer({}, {"parameters": {"max_tokens": 5}}) == estimate.Estimate(4, 10, 5)
    assert infer({"parameters": {"max_tokens": 3}},
                 {"parameters": {"max_tokens": 5}}) == estimate.Estimate(4, 6, 3)
