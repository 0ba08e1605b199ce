"""Billing end to end: 10,000 requests through 3 gateways; the aggregator is SIGKILLed mid-run
and restarted; the hourly totals in PostgreSQL equal the requests made, exactly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests import helpers
from tests.stores import PostgresServer

REQUESTS = 10_000
CONCURRENCY = 48


def aggregator(tmp_path: Path, env: dict[str, str], run: int) -> subprocess.Popen[bytes]:
    return helpers.spawn("billing", log=tmp_path / f"billing-{run}.log",
                         env={**env, "UPLION_LOG_LEVEL": "info"})


@pytest.mark.redis
def test_every_request_is_billed_once_across_an_aggregator_crash(
    postgres_server: PostgresServer, clean_redis: str, tmp_path: Path
) -> None:
    env = {"UPLION_DATABASE_URL": postgres_server.create_database(),
           "UPLION_REDIS_URL": clean_redis, "UPLION_DATA_DIR": str(tmp_path / "data")}
    admin_token = helpers.bootstrap_store(tmp_path, env)
    admin = {"Authorization": f"Bearer {admin_token}"}
    worker = helpers.spawn("worker", "--models", str(helpers.ECHO_MODELS), "--broker",
                           clean_redis, "--model", "echo", "--concurrency", "64",
                           log=tmp_path / "worker.log", env=env)
    first = aggregator(tmp_path, env, 1)
    second: subprocess.Popen[bytes] | None = None
    try:
        with helpers.platform(tmp_path, broker_url=clean_redis, command="gateway",
                              env=env) as one, \
                helpers.platform(tmp_path, broker_url=clean_redis, command="gateway",
                                 env=env) as two, \
                helpers.platform(tmp_path, broker_url=clean_redis, command="gateway",
                                 env=env) as three:
            urls = [one.url, two.url, three.url]
            user = httpx.post(f"{one.url}/admin/users", headers=admin,
                              json={"name": "billed"}).json()
            token = httpx.post(f"{one.url}/admin/tokens", headers=admin,
                               json={"user_id": user["id"]}).json()["token"]

            def crash_and_restart() -> None:
                nonlocal second
                first.send_signal(signal.SIGKILL)
                first.wait()
                second = aggregator(tmp_path, env, 2)

            started = time.monotonic()
            statuses = asyncio.run(_fire(urls, token, crash_and_restart))
            elapsed = time.monotonic() - started
            assert statuses == {200: REQUESTS}
            totals = _wait_for_totals(one.url, admin, user["id"])
        assert first.returncode == -signal.SIGKILL
    finally:
        for process in (worker, first, second):
            if process is not None:
                helpers.stop(process)
    assert totals == {"requests": REQUESTS, "prompt_tokens": 2 * REQUESTS,  # echo: a word each
                      "completion_tokens": 2 * REQUESTS}
    flushes = sum(log.read_text().count("flush (") for log in tmp_path.glob("billing-*.log"))
    print(f"\n{REQUESTS} requests through 3 gateways in {elapsed:.1f} s "
          f"({REQUESTS / elapsed:.0f}/s); {flushes} write transactions "
          f"({REQUESTS / max(flushes, 1):.0f} events each)")
    assert flushes <= REQUESTS / 100


async def _fire(urls: list[str], token: str, at_a_third: object) -> dict[int, int]:
    body = {"model": "echo", "messages": [{"role": "user", "content": "bill me"}]}
    headers = {"Authorization": f"Bearer {token}"}
    counts: dict[int, int] = {}
    queue = iter(range(REQUESTS))
    async with httpx.AsyncClient(timeout=30, headers=headers,
                                 limits=httpx.Limits(max_connections=CONCURRENCY)) as client:
        async def lane() -> None:
            for index in queue:
                if index == REQUESTS // 3:
                    at_a_third()  # type: ignore[operator]
                response = await client.post(f"{urls[index % 3]}/v1/chat/completions", json=body)
                counts[response.status_code] = counts.get(response.status_code, 0) + 1
        await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
    return counts


def _wait_for_totals(url: str, admin: dict[str, str], user_id: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = httpx.get(f"{url}/admin/usage", headers=admin, params={"user_id": user_id}).json()
        totals = {key: sum(row[key] for row in rows["data"])
                  for key in ("requests", "prompt_tokens", "completion_tokens")}
        if totals["requests"] >= REQUESTS:
            time.sleep(2)  # anything still arriving would be a double count
            rows = httpx.get(f"{url}/admin/usage", headers=admin,
                             params={"user_id": user_id}).json()
            return {key: sum(row[key] for row in rows["data"])
                    for key in ("requests", "prompt_tokens", "completion_tokens")}
        time.sleep(0.5)
    return totals
