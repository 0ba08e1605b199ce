"""`uplion run` on its defaults serves the real models: SmolLM2 chat and MiniLM embeddings."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import openai
import pytest

from tests import helpers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    tmp = tmp_path_factory.mktemp("defaults")
    os.environ["UPLION_CACHE_DIR"] = str(tmp / "cache")
    try:
        with helpers.platform(tmp, models=helpers.DEFAULT_MODELS, timeout=180) as served, \
                openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.admin_token,
                              max_retries=0) as instance:
            yield instance
    finally:
        del os.environ["UPLION_CACHE_DIR"]


def test_default_models_are_listed(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]


def test_smollm2_answers_a_chat_question(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct", temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 40


def test_smollm2_streams_token_by_token(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", temperature=0, max_tokens=20, stream=True,
        messages=[{"role": "user", "content": "Count from one to ten."}],
    )
    deltas = [c.choices[0].delta.content for c in stream
              if c.choices and c.choices[0].delta.content]
    assert len(deltas) >= 5


def test_minilm_embeds(client: openai.OpenAI) -> None:
    reply = client.embeddings.create(
        model="all-minilm-l6-v2",
        input=["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell today."],
    )
    vectors = [item.embedding for item in reply.data]
    assert all(len(vector) == 384 for vector in vectors)
    assert math.isclose(sum(v * v for v in vectors[0]), 1.0, rel_tol=1e-3)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    assert reply.usage.prompt_tokens > 10
