"""The OpenAI API through the official `openai` client, against `uplion run` on test-echo models."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests import helpers


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("openai")) as running:
        yield running


@pytest.fixture
def http(served: helpers.Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=served.headers, timeout=10) as instance:
        yield instance


@pytest.fixture
def client(served: helpers.Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.admin_token,
                       max_retries=0) as instance:
        yield instance


def test_models_list_names_each_model_once(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == ["echo", "echo-slow", "echo-embed", "too-slow", "cold"]
    assert client.models.retrieve("echo").owned_by == "uplion"


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello there world"}]
    )
    assert reply.object == "chat.completion"
    assert reply.model == "echo"
    assert reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "hello there world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 3)
    assert reply.usage.total_tokens == 6


def test_chat_completion_max_tokens_cuts_with_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="echo", max_tokens=2, messages=[{"role": "user", "content": "one two three"}]
    )
    assert reply.choices[0].message.content == "one two"
    assert reply.choices[0].finish_reason == "length"


def test_pinned_version_is_served(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="echo@2", messages=[{"role": "user", "content": "v2"}]
    )
    assert reply.model == "echo@2"
    assert reply.choices[0].message.content == "v2"


def test_streaming_chat_yields_deltas_then_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="echo", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "a b c d"}],
    )
    chunks = list(stream)
    text_chunks = [c for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in text_chunks) == "a b c d"
    assert len(text_chunks) >= 4
    assert text_chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_stream_ends_with_done(http: httpx.Client) -> None:
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "x y"}]}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 3


def test_completion_and_streaming_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="echo", prompt="the quick brown fox", max_tokens=3)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == "the quick brown"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3
    streamed = client.completions.create(model="echo", prompt="red green", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "red green"


def test_embeddings_float_and_base64(client: openai.OpenAI, http: httpx.Client) -> None:
    reply = client.embeddings.create(model="echo-embed", input=["alpha", "beta gamma"],
                                     encoding_format="float")
    assert [item.index for item in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) == 8
    assert reply.data[0].embedding != reply.data[1].embedding
    assert reply.usage.prompt_tokens == 3
    raw = http.post("/v1/embeddings", json={
        "model": "echo-embed", "input": "alpha", "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == pytest.approx(reply.data[0].embedding, abs=1e-6)


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"  # type: ignore[index]


def test_malformed_field_is_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="echo", messages=[{"role": "robot", "content": "x"}]  # type: ignore[misc,list-item]
        )
    assert caught.value.body["param"] == "messages[0].role"  # type: ignore[index]
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo"}, None),
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
         "max_tokens"),
        ({"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
         "temperature"),
        ({"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
    ],
)
def test_bad_bodies_are_400_in_openai_shape(
    http: httpx.Client, body: dict[str, object], param: str | None
) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    else:
        assert "messages" in error["message"]


def test_invalid_json_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "parse the JSON" in response.json()["error"]["message"]


def test_embedding_on_a_chat_model_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="echo", input="x")
    assert caught.value.code == "model_not_supported"


def test_unknown_url_is_404_in_openai_shape(http: httpx.Client) -> None:
    response = http.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"


def test_no_answer_by_the_deadline_is_504(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="too-slow", messages=[{"role": "user", "content": "a b c d e f"}]
        )
    assert caught.value.status_code == 504
    assert "deadline" in caught.value.message
    assert 0.9 <= time.monotonic() - started < 5


def test_client_disconnect_cancels_the_task(http: httpx.Client, tmp_path: Path) -> None:
    words = " ".join(f"w{i}" for i in range(150))  # 150 x 50 ms: 7.5 s if never cancelled
    body = {"model": "echo-slow", "stream": True, "messages": [{"role": "user", "content": words}]}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    # echo-slow has 4 slots; if cancelled tasks kept running, 4 more long ones would fill them.
    for _ in range(4):
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            next(response.iter_lines())
    started = time.monotonic()
    quick = http.post("/v1/chat/completions", timeout=10, json={
        "model": "echo-slow", "messages": [{"role": "user", "content": "fast"}]})
    assert quick.status_code == 200
    assert time.monotonic() - started < 2.0


def test_metrics_count_requests_tokens_and_backlog(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "m e"}])
    text = http.get("/metrics").text
    assert ('uplion_requests_total{model="echo",protocol="openai-chat",status="200",version="1"}'
            in text)
    assert 'uplion_tokens_total{direction="completion",model="echo"}' in text
    assert "uplion_request_duration_seconds_bucket" in text
    assert "uplion_queue_wait_seconds_count" in text
    assert 'uplion_topic_backlog{state="waiting",topic="model.echo@1"} 0.0' in text
