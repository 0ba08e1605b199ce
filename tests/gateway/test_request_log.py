"""The request log: one line per request when it ends, with its id (the client's
``x-request-id`` when it is a plain token, echoed), the model version, the status, the durations,
the tokens billed and the trace id, and never the prompt or the answer's text."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests import helpers
from tests.serving import Served, serving
from uplion import logs, tracing
from uplion.worker.engines.echo import EchoEngine

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PROMPT = "secret words of the prompt"
CHAT = {"model": "echo", "messages": [{"role": "user", "content": PROMPT}]}


class Lines(logging.Handler):
    """The request log's records, as they are written."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self._written = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._written.set()

    async def next(self) -> logging.LogRecord:
        """The first record not taken yet (waits for it)."""
        async with asyncio.timeout(10):
            while not self.records:
                self._written.clear()
                await self._written.wait()
        return self.records.pop(0)


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("uplion.requests")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    tracing.install(None)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving("memory://", tmp_path, EchoEngine(token_delay_s=0.02)) as running:
        yield running


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The record as its JSON line says it."""
    line = logs.JsonFormatter().format(record)
    assert PROMPT.split()[0] not in line
    parsed: dict[str, object] = json.loads(line)
    return parsed


async def test_an_answered_request_is_one_line_with_its_id_durations_tokens_and_trace(
    served: Served, lines: Lines
) -> None:
    async with served.client() as client:
        response = await client.post("/v1/chat/completions", json=CHAT, headers={
            "x-request-id": "req-7", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-7"
    line = _fields(await lines.next())
    assert {key: line[key] for key in (
        "logger", "level", "request_id", "model", "version", "protocol", "stream", "status",
        "outcome", "prompt_tokens", "completion_tokens", "trace_id")} == {
        "logger": "uplion.requests", "level": "info", "request_id": "req-7", "model": "echo",
        "version": "1", "protocol": "openai-chat", "stream": False, "status": 200,
        "outcome": "answered", "prompt_tokens": 5, "completion_tokens": 5, "trace_id": TRACE}
    total, queue, engine = (line[key] for key in ("total_s", "queue_s", "engine_s"))
    assert isinstance(total, float)
    assert isinstance(queue, float)
    assert isinstance(engine, float)
    assert engine >= 5 * 0.02  # five words, one every 20 ms
    assert total >= queue + engine - 0.01  # clocks of gateway and worker may differ by a tick
    assert isinstance(line["task_id"], str)
    assert line["request_id"] != line["task_id"]
    assert lines.records == []  # one line per request


@pytest.mark.parametrize("sent", ["x" * 129, "has space", "semi;colon", ""])
async def test_an_unsafe_request_id_is_replaced_and_the_new_one_echoed(
    served: Served, lines: Lines, sent: str
) -> None:
    async with served.client() as client:
        response = await client.post("/v1/chat/completions", json=CHAT,
                                     headers={"x-request-id": sent})
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert echoed != sent
    line = _fields(await lines.next())
    assert line["request_id"] == echoed
    assert line["trace_id"] is None  # no traceparent, and tracing is off


async def test_a_client_that_leaves_is_logged_with_what_its_worker_produced(
    served: Served, lines: Lines
) -> None:
    body = {**CHAT, "stream": True,
            "messages": [{"role": "user", "content": " ".join(["w"] * 200)}]}
    async with served.client() as client, client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"x-request-id": "gone-1"},
    ) as response:
        events = response.aiter_lines()
        assert (await anext(events)).startswith("data: ")  # the first word, then leave
    line = _fields(await lines.next())
    assert (line["request_id"], line["status"], line["outcome"]) == ("gone-1", 499,
                                                                     "client gone")
    completion = line["completion_tokens"]
    assert isinstance(completion, int)
    assert 1 <= completion < 200


async def test_a_request_refused_before_its_task_is_published_is_logged(
    served: Served, lines: Lines
) -> None:
    token_id = served.token.split("-")[1]
    async with served.client() as client:
        patched = await client.patch(f"/admin/tokens/{token_id}",
                                     json={"quota": {"tokens": 5, "period": "day"}})
        assert patched.status_code == 200, patched.text
        response = await client.post("/v1/chat/completions", json=CHAT,
                                     headers={"x-request-id": "big-1"})
    assert response.status_code == 429, response.text
    line = _fields(await lines.next())
    assert (line["request_id"], line["status"], line["outcome"]) == (
        "big-1", 429, response.json()["error"]["code"])
    assert (line["prompt_tokens"], line["completion_tokens"], line["queue_s"]) == (0, 0, None)


def test_uplion_run_writes_json_lines_when_not_on_a_terminal(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - name: echo\n    engine: {kind: test-echo}\n")
    with helpers.platform(tmp_path, models, env={"UPLION_LOG_LEVEL": "info"}) as running:
        response = httpx.post(f"{running.url}/v1/chat/completions", json=CHAT, timeout=10,
                              headers={**running.headers, "x-request-id": "proc-1"})
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "proc-1"
    printed = running.log.read_text()
    assert PROMPT not in printed
    records = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert any(record["logger"].startswith("uvicorn") for record in records)
    [request] = [record for record in records if record["logger"] == "uplion.requests"]
    assert (request["request_id"], request["status"], request["completion_tokens"]) == (
        "proc-1", 200, 5)
