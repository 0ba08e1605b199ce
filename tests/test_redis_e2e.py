"""Redis Streams end to end: a gateway process, two worker processes, one killed mid-work."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests import helpers

MODELS = helpers.DATA / "echo-slow-models.yaml"
WORDS = 12  # 12 x 50 ms per request


def _expected(index: int) -> str:
    return " ".join(f"r{index}w{word}" for word in range(WORDS))


async def _ask(client: openai.AsyncOpenAI, index: int, stream: bool) -> str:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": _expected(index)}]
    if not stream:
        reply = await client.chat.completions.create(model="echo-slow", messages=messages)
        return reply.choices[0].message.content or ""
    parts: list[str] = []
    events = await client.chat.completions.create(
        model="echo-slow", messages=messages, stream=True
    )
    async for chunk in events:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    return "".join(parts)


@pytest.mark.redis
def test_killed_worker_tasks_are_redelivered_once(clean_redis: str, tmp_path: Path) -> None:
    broker_url = f"{clean_redis}?visibility_timeout_s=1"
    env = {"UPLION_DATA_DIR": str(tmp_path / "data"), "UPLION_REDIS_URL": clean_redis,
           "UPLION_METRICS_REFRESH_S": "0.1"}
    token = helpers.bootstrap_store(tmp_path, env)
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [helpers.spawn("worker", "--models", str(MODELS), "--broker", broker_url,
                             "--model", "echo-slow", log=log) for log in logs]
    try:
        with helpers.platform(tmp_path, MODELS, broker_url, command="gateway",
                              env=env) as served:
            answers = asyncio.run(_run(served.url, token, workers[0]))
        assert workers[0].returncode == -signal.SIGKILL
    finally:
        for process in workers:
            helpers.stop(process)
    assert answers == {index: _expected(index) for index in range(24)}


async def _run(
    base_url: str, token: str, victim: subprocess.Popen[bytes]
) -> dict[int, str]:
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=token,
                                  max_retries=0, timeout=30) as client:
        requests = [asyncio.create_task(_ask(client, index, stream=index % 2 == 0))
                    for index in range(24)]
        await _wait_until_busy(base_url, token)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        started = time.monotonic()
        results = await asyncio.gather(*requests)
        assert time.monotonic() - started < 15
    return dict(enumerate(results))


async def _wait_until_busy(base_url: str, token: str) -> None:
    """Until both workers hold tasks (8 in flight), so the kill strands some."""
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(100):
            text = (await http.get(f"{base_url}/metrics")).text
            if 'uplion_topic_backlog{state="in_flight",topic="model.echo-slow@1"} 8.0' in text:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the workers never held 8 tasks")
