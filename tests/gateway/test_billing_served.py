"""Usage is billed for what was served: clients that leave mid-answer, through real HTTP.

The gateway (uvicorn) and a worker run in this test's event loop on the embedded broker, so the
test knows how many tokens the engine produced before each client left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serving import serving
from tests.worker.counting import CountingEcho
from uplion import wiring
from uplion.billing import UsageEvent
from uplion.models import EngineSpec, ModelSpec

WORDS = " ".join(f"w{i}" for i in range(40))
PROMPT_ESTIMATE = 42  # the gateway's: a token per four characters of the 149, and 4 per message


@dataclass
class Served:
    url: str
    headers: dict[str, str]
    engine: CountingEcho
    backends: wiring.Backends

    async def event(self) -> UsageEvent:
        async with asyncio.timeout(10):
            while True:
                entries = await self.backends.usage.read(1, 500)
                if entries:
                    return entries[0][1]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    spec = ModelSpec(name="echo-slow", engine=EngineSpec(kind="test-echo"), request_timeout_s=20)
    engine = CountingEcho(token_delay_s=0.05, after=3)
    async with serving("memory://", tmp_path, engine, spec) as running:
        yield Served(running.url, running.headers, engine, running.backends)


async def test_abandoned_requests_are_billed_the_prompt_and_the_tokens_produced(
    served: Served,
) -> None:
    body = {"model": "echo-slow", "messages": [{"role": "user", "content": WORDS}]}
    async with httpx.AsyncClient(base_url=served.url, headers=served.headers,
                                 timeout=20) as client:
        plain = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await served.engine.reached.wait()
        plain.cancel()  # the client closes its connection after a few tokens
        billed_plain = await served.event()
        produced_plain = served.engine.produced

        served.engine.reached.clear()
        served.engine.after = produced_plain + 3
        async with client.stream("POST", "/v1/chat/completions",
                                 json={**body, "stream": True}) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # the first chunk, then leave
            await served.engine.reached.wait()
        billed_stream = await served.event()
        produced_stream = served.engine.produced - produced_plain

    print(f"\nplain: {produced_plain} tokens produced, billed {billed_plain}"
          f"\nstream: {produced_stream} tokens produced, billed {billed_stream}")
    assert (billed_plain.status, billed_stream.status) == (499, 499)
    assert billed_plain.prompt_tokens == billed_stream.prompt_tokens == PROMPT_ESTIMATE
    assert billed_plain.completion_tokens == produced_plain >= 3
    assert billed_stream.completion_tokens == produced_stream >= 3
    assert produced_plain < 40
    assert produced_stream < 40


async def test_parts_the_model_cannot_read_are_refused_before_anything_is_reserved(
    served: Served,
) -> None:
    content = [{"type": "text", "text": "what is this?"},
               {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    body = {"model": "echo-slow", "messages": [{"role": "user", "content": content}]}
    async with httpx.AsyncClient(base_url=served.url, headers=served.headers) as client:
        answer = await client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "messages[0].content[1].type"
    assert "'input_audio'" in error["message"]
    assert await served.backends.usage.read(1, 0) == []  # not admitted: nothing billed
    assert served.engine.produced == 0
