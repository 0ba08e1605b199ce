"""Rate limits are exact across gateway processes: three gateways, one limit, Redis between."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests import helpers


@pytest.mark.redis
def test_three_gateways_admit_exactly_the_limit(clean_redis: str, tmp_path: Path) -> None:
    env = {"UPLION_DATA_DIR": str(tmp_path / "data"), "UPLION_REDIS_URL": clean_redis}
    admin_token = helpers.bootstrap_store(tmp_path, env)
    worker = helpers.spawn("worker", "--models", str(helpers.ECHO_MODELS), "--broker",
                           clean_redis, "--model", "echo", "--concurrency", "64",
                           log=tmp_path / "worker.log", env=env)
    try:
        with contextlib.ExitStack() as stack:
            gateways = [stack.enter_context(helpers.platform(
                tmp_path, broker_url=clean_redis, command="gateway", env=env))
                for _ in range(3)]
            token = _limited_token(gateways[0].url, admin_token)
            statuses = asyncio.run(_fire([g.url for g in gateways], token, 500))
    finally:
        helpers.stop(worker)
    assert statuses == Counter({"200": 100, "429 rate_limit_exceeded": 400})


def _limited_token(url: str, admin_token: str) -> str:
    headers = {"Authorization": f"Bearer {admin_token}"}
    user = httpx.post(f"{url}/admin/users", headers=headers, json={
        "name": "hundred", "limits": {"requests_per_minute": 100}}).json()
    created = httpx.post(f"{url}/admin/tokens", headers=headers, json={"user_id": user["id"]})
    return str(created.json()["token"])


async def _fire(urls: list[str], token: str, count: int) -> Counter[str]:
    """The answers' statuses, with the error code of each refusal. 64 requests are in flight at
    once, spread over the gateways: enough to race them, without queueing hundreds on one Redis
    connection pool of a loaded 2-core machine (a full run once saw one 503 at 500 at once)."""
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        responses = await asyncio.gather(*(
            client.post(f"{urls[index % len(urls)]}/v1/chat/completions", json=body,
                        headers=headers)
            for index in range(count)
        ))
    return Counter(
        str(response.status_code) if response.status_code == 200
        else f"{response.status_code} {response.json()['error']['code']}"
        for response in responses
    )
