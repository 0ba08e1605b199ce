"""Limits on bodies and fields through `uplion run`: a 413 or a 400 naming the field, in the
API's own error shape, never a plain-text 500 (a body nested thousands of levels deep included)."""

from __future__ import annotations

import asyncio
import http.client as http_client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests import helpers
from uplion import broker, protocol, schemas

BODY_LIMIT = 256 * 1024
V2_BODY_LIMIT = 1024 * 1024
LIMITS = {"UPLION_MAX_BODY_BYTES": str(BODY_LIMIT), "UPLION_MAX_V2_BODY_BYTES": str(V2_BODY_LIMIT)}
MESSAGE = {"role": "user", "content": "one two"}
CHAT = {"model": "echo", "messages": [MESSAGE]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("limits"), env=LIMITS) as running:
        yield running


@pytest.fixture
def http(served: helpers.Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=served.headers, timeout=30) as instance:
        yield instance


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def v2_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    return body["error"]


def declared_only(served: helpers.Served, path: str, length: int) -> httpx.Response:
    """A request that declares ``length`` bytes of body and sends none of them."""
    address = urlsplit(served.url)
    connection = http_client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Authorization", f"Bearer {served.admin_token}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        answer = connection.getresponse()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=answer.read())
    finally:
        connection.close()


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(
    served: helpers.Served,
) -> None:
    error = openai_error(declared_only(served, "/v1/chat/completions", BODY_LIMIT + 1), 413)
    assert error["code"] == "request_too_large"
    assert str(BODY_LIMIT) in error["message"]
    message = v2_error(declared_only(served, "/v2/models/echo/infer", V2_BODY_LIMIT + 1), 413)
    assert str(V2_BODY_LIMIT) in message


def test_a_streamed_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "echo", "messages": [], "padding": "'
        for _ in range(5):
            yield b"x" * (64 * 1024)
        yield b'"}'

    response = http.post("/v1/chat/completions", content=chunks(),
                         headers={"content-type": "application/json"})
    assert openai_error(response, 413)["code"] == "request_too_large"


def test_v2_bodies_may_be_larger(http: httpx.Client) -> None:
    text = "a" * (BODY_LIMIT + 1024)
    response = http.post("/v2/models/echo/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [text]


@pytest.mark.parametrize(
    ("path", "body", "param", "limit"),
    [
        ("/v1/chat/completions", {**CHAT, "messages": [MESSAGE] * (schemas.MAX_MESSAGES + 1)},
         "messages", schemas.MAX_MESSAGES),
        ("/v1/chat/completions", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop",
         schemas.MAX_STOP),
        ("/v1/completions", {"model": "echo", "prompt": "x", "stop": list("abcde")}, "stop",
         schemas.MAX_STOP),
        ("/v1/chat/completions", {**CHAT, "stop": "s" * (schemas.MAX_NAME + 1)}, "stop",
         schemas.MAX_NAME),
        ("/v1/embeddings", {"model": "echo-embed", "input": ["x"] * (schemas.MAX_INPUTS + 1)},
         "input", schemas.MAX_INPUTS),
        ("/v1/chat/completions", {**CHAT, "model": "m" * (schemas.MAX_NAME + 1)}, "model",
         schemas.MAX_NAME),
        ("/v1/chat/completions", {**CHAT, "user": "u" * (schemas.MAX_NAME + 1)}, "user",
         schemas.MAX_NAME),
        ("/v1/chat/completions", {**CHAT, "max_tokens": schemas.MAX_TOKENS + 1}, "max_tokens",
         schemas.MAX_TOKENS),
        ("/v1/chat/completions", {**CHAT, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x"}] * 257}]},
         "messages[0].content", schemas.MAX_CONTENT_PARTS),
    ],
)
def test_fields_over_their_limit_are_400_naming_them(
    http: httpx.Client, path: str, body: dict[str, Any], param: str, limit: int
) -> None:
    error = openai_error(http.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert str(limit) in error["message"]


def test_four_stop_sequences_are_allowed(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={**CHAT, "stop": ["a", "b", "c", "d"]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("tensor", "named"),
    [
        ({"name": "big", "datatype": "FP32", "shape": [schemas.MAX_TENSOR_ELEMENTS + 1],
          "parameters": {"binary_data_size": 4}}, str(schemas.MAX_TENSOR_ELEMENTS)),
        ({"name": "wide", "datatype": "FP32", "shape": [1 << 40, 1 << 40], "data": [1.0]},
         str(schemas.MAX_TENSOR_ELEMENTS)),
        ({"name": "tall", "datatype": "FP32", "shape": [1] * (schemas.MAX_TENSOR_RANK + 1),
          "data": [1.0]}, str(schemas.MAX_TENSOR_RANK)),
        ({"name": "n" * (schemas.MAX_NAME + 1), "datatype": "FP32", "shape": [1],
          "data": [1.0]}, str(schemas.MAX_NAME)),
    ],
)
def test_tensors_over_their_limits_are_400(
    http: httpx.Client, tensor: dict[str, Any], named: str
) -> None:
    message = v2_error(http.post("/v2/models/echo/infer", json={"inputs": [tensor]}), 400)
    assert named in message


def test_v2_max_tokens_over_the_limit_is_400(http: httpx.Client) -> None:
    text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}
    for body in [{"inputs": [text], "parameters": {"max_tokens": schemas.MAX_TOKENS + 1}},
                 {"inputs": [{**text, "parameters": {"max_tokens": schemas.MAX_TOKENS + 1}}]}]:
        message = v2_error(http.post("/v2/models/echo/infer", json=body), 400)
        assert f"max_tokens is {schemas.MAX_TOKENS + 1}" in message
        assert str(schemas.MAX_TOKENS) in message


def test_too_many_tensors_are_400(http: httpx.Client) -> None:
    inputs = [{"name": f"t{i}", "datatype": "FP32", "shape": [1], "data": [1.0]}
              for i in range(schemas.MAX_TENSORS + 1)]
    message = v2_error(http.post("/v2/models/echo/infer", json={"inputs": inputs}), 400)
    assert str(schemas.MAX_TENSORS) in message


def nested(depth: int) -> bytes:
    """A JSON object whose ``x`` is ``depth - 1`` arrays one inside the other."""
    return b'{"model": "echo", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


ENDPOINTS = [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
    ("POST", "/v2/models/echo/infer"), ("POST", "/v2/models/echo/versions/1/infer"),
    ("POST", "/authz/check"), ("POST", "/authz/check/v1/chat/completions"),
    ("POST", "/admin/users"), ("PATCH", "/admin/users/nobody"), ("POST", "/admin/tokens"),
    ("PATCH", "/admin/tokens/nothing"), ("PUT", "/admin/models/echo/traffic"),
    ("POST", "/v1/modelDeployment"), ("PATCH", "/v1/modelDeployment/none"),
]


@pytest.mark.parametrize("depth", [100_000, schemas.MAX_JSON_DEPTH + 1])
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_deeply_nested_bodies_are_400(
    http: httpx.Client, method: str, path: str, depth: int
) -> None:
    response = http.request(method, path, content=nested(depth),
                            headers={"content-type": "application/json"})
    if path.startswith("/v2"):
        message = v2_error(response, 400)
    else:
        message = openai_error(response, 400)["message"]
    assert f"nested more than {schemas.MAX_JSON_DEPTH} levels" in message


def test_nesting_up_to_the_limit_is_accepted(http: httpx.Client) -> None:
    body = json.loads(nested(schemas.MAX_JSON_DEPTH))
    response = http.post("/v1/chat/completions", json={**CHAT, "x": body["x"]})
    assert response.status_code == 200, response.text


def test_every_answer_has_a_request_id(http: httpx.Client) -> None:
    answers = [http.get("/v1/models"), http.get("/v1/nothing"), http.get("/v2/health/live"),
               http.post("/v1/chat/completions", json={"model": "echo"})]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert len(set(ids)) == len(ids)
    assert all(ids)
    echoed = http.get("/v1/models", headers={"x-request-id": "trace-42.a_b"})
    assert echoed.headers["x-request-id"] == "trace-42.a_b"
    unsafe = http.get("/v1/models", headers={"x-request-id": "no spaces\tor tabs"})
    assert unsafe.headers["x-request-id"] not in ("", "no spaces\tor tabs")


async def announce_context(broker_url: str, context_length: int) -> None:
    """A heartbeat of a running worker of echo@1 whose model attends to ``context_length``."""
    source = broker.connect(broker_url)
    await source.start()
    try:
        await source.publish_status(protocol.WorkerStatus(
            worker="announcer", model="echo", version="1", state="running", slots=1, busy=0,
            at=time.time(), started=time.time(), info=protocol.ModelInfo(
                serves="text-generation", context_length=context_length),
        ))
    finally:
        await source.close()


def wait_running(url: str, headers: dict[str, str]) -> None:
    for _ in range(100):
        model = httpx.get(f"{url}/v1/models/echo", headers=headers, timeout=10).json()
        if model["status"]["phase"] == "Running":
            return
        time.sleep(0.05)
    raise AssertionError(f"echo never became Running: {model}")


@pytest.mark.redis
def test_max_tokens_beyond_the_model_context_is_400(clean_redis: str, tmp_path: Path) -> None:
    """The gateway knows a model's context from its workers' heartbeats (here, one published
    by the test to a gateway without workers: a refusal never reaches the queue)."""
    env = {"UPLION_DATA_DIR": str(tmp_path / "data"), "UPLION_REDIS_URL": clean_redis}
    headers = {"Authorization": f"Bearer {helpers.bootstrap_store(tmp_path, env)}"}
    with helpers.platform(tmp_path, broker_url=clean_redis, command="gateway",
                          env=env) as gateway:
        asyncio.run(announce_context(clean_redis, 4096))
        wait_running(gateway.url, headers)
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as client:
            for path, body, param in [
                ("/v1/chat/completions", {**CHAT, "max_tokens": 4097}, "max_tokens"),
                ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 5000},
                 "max_completion_tokens"),
                ("/v1/completions", {"model": "echo", "prompt": "x", "max_tokens": 8000},
                 "max_tokens"),
            ]:
                error = openai_error(client.post(path, json=body), 400)
                assert error["code"] == "context_length_exceeded"
                assert error["param"] == param
                assert "4096" in error["message"]
            text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}
            for v2 in [{"inputs": [text], "parameters": {"max_tokens": 4097}},
                       {"inputs": [{**text, "parameters": {"max_tokens": 4097}}]}]:
                message = v2_error(client.post("/v2/models/echo/infer", json=v2), 400)
                assert "4096" in message
