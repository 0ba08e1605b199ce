"""Session-wide services for the tests: real Redis and PostgreSQL servers, started on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis
import redis.asyncio

from tests.ports import free_port
from tests.stores import (
    database,
    database_url,
    postgres_server,
    postgres_url,
    stoppable_postgres,
)

__all__ = ["database", "database_url", "postgres_server", "postgres_url", "stoppable_postgres"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server (Debian's package; `make test` installs it when absent)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "no", "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"redis-server did not start; see {workdir / 'redis.log'}")
            time.sleep(0.05)
    client.close()
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The session's Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    return redis_url


@pytest_asyncio.fixture(loop_scope="function")
async def raw(clean_redis: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client of the emptied Redis, to look at (or spoil) what a component wrote."""
    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(clean_redis)
    yield client
    await client.aclose()
