"""One trace per request, across the queue: the gateway's request span (continuing the client's
``traceparent``), its admission and publication, the task's time on the queue, the worker and the
engine, with the right parents, on the embedded broker and on Redis Streams.

The spans are collected in-process by an SDK provider installed with ``tracing.install``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from tests.serving import Served, serving
from uplion import tracing
from uplion.worker.engines import base
from uplion.worker.engines.echo import EchoEngine

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}


class Collected(SpanProcessor):
    """The spans ended so far; ``wait_for`` waits until a span of a name has ended."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self._ended = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)
        self._ended.set()

    async def wait_for(self, *names: str) -> dict[str, ReadableSpan]:
        """The ended spans named ``names`` (one each), once all have ended."""
        async with asyncio.timeout(10):
            while not set(names) <= {span.name for span in self.spans}:
                self._ended.clear()
                await self._ended.wait()
        found = {span.name: span for span in self.spans if span.name in names}
        assert len(found) == len(names)
        return found


@pytest.fixture
def spans() -> Iterator[Collected]:
    provider = TracerProvider()
    collected = Collected()
    provider.add_span_processor(collected)
    tracing.install(provider)
    yield collected
    tracing.install(None)
    provider.shutdown()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def served(request: pytest.FixtureRequest, tmp_path: Path,
                 spans: Collected) -> AsyncIterator[Served]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("clean_redis")
    async with serving(url, tmp_path) as running:
        yield running


NAMES = ("uplion.request", "uplion.admission", "uplion.publish", "uplion.queue", "uplion.worker",
         "uplion.engine")


def _ids(span: ReadableSpan) -> tuple[int, int, int | None]:
    """(trace id, span id, parent span id) of ``span``."""
    assert span.context is not None
    return span.context.trace_id, span.context.span_id, span.parent.span_id if span.parent else None


async def test_a_request_is_one_trace_from_the_client_through_the_queue_to_the_engine(
    served: Served, spans: Collected
) -> None:
    async with served.client() as client:
        response = await client.post("/v1/chat/completions", json=CHAT, headers={
            "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "x-request-id": "req-42"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-42"
    found = await spans.wait_for(*NAMES)

    trace_ids = {_ids(span)[0] for span in found.values()}
    assert trace_ids == {int(CLIENT_TRACE, 16)}
    request, admission, publish, queue, worker, engine = (found[name] for name in NAMES)
    assert _ids(request)[2] == int(CLIENT_SPAN, 16)
    assert request.parent is not None
    assert request.parent.is_remote
    for child in (admission, publish, queue):
        assert _ids(child)[2] == _ids(request)[1], child.name
    assert _ids(worker)[2] == _ids(queue)[1]
    assert _ids(engine)[2] == _ids(worker)[1]

    assert (request.kind, publish.kind, worker.kind) == (
        SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert request.attributes is not None
    assert queue.attributes is not None
    assert request.attributes["uplion.request_id"] == "req-42"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["uplion.model"] == "echo"
    assert engine.attributes == {"uplion.engine": "EchoEngine", "gen_ai.usage.input_tokens": 3,
                                 "gen_ai.usage.output_tokens": 3}
    # The queue span runs from the publication to the take, before the worker's span starts.
    assert queue.start_time is not None
    assert queue.end_time is not None
    assert publish.start_time is not None
    assert worker.start_time is not None
    assert publish.start_time >= queue.start_time
    assert queue.end_time <= worker.start_time
    assert queue.attributes["uplion.queue.wait_s"] == pytest.approx(
        (queue.end_time - queue.start_time) / 1e9)
    assert queue.attributes["uplion.task_id"] == request.attributes["uplion.task_id"]


async def test_a_request_without_traceparent_starts_a_trace_of_its_own(
    served: Served, spans: Collected
) -> None:
    async with served.client() as client:
        response = await client.post("/v1/chat/completions",
                                     json={**CHAT, "stream": True},
                                     headers={"traceparent": "00-not-a-trace-01"})
    assert response.status_code == 200
    found = await spans.wait_for(*NAMES)
    assert len({_ids(span)[0] for span in found.values()}) == 1
    assert found["uplion.request"].parent is None
    assert _ids(found["uplion.engine"])[2] == _ids(found["uplion.worker"])[1]


class FailingEcho(EchoEngine):
    def chat(
        self, messages: list[dict[str, Any]], params: base.GenerationParams
    ) -> AsyncIterator[base.TextDelta]:
        raise RuntimeError("the engine broke")


async def test_an_engine_failure_marks_the_engine_and_request_spans_failed(
    tmp_path: Path, spans: Collected
) -> None:
    async with serving("memory://", tmp_path, FailingEcho()) as running, \
            running.client() as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    found = await spans.wait_for("uplion.request", "uplion.engine")
    engine, request = found["uplion.engine"], found["uplion.request"]
    assert engine.status.status_code == StatusCode.ERROR
    assert [event.name for event in engine.events] == ["exception"]
    assert engine.events[0].attributes is not None
    assert engine.events[0].attributes["exception.message"] == "the engine broke"
    assert request.status.status_code == StatusCode.ERROR
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 500
    assert request.attributes["uplion.outcome"] == "failed"
