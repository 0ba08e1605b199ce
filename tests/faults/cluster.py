"""A cluster of real uplion processes for the fault tests: Redis, gateways, workers, billing.

The cluster's Redis is a ``RedisProcess`` of the test's own, without persistence: ``stop`` and
``start`` again is a Redis that lost everything, as after a crash of a cache-only Redis.
``Cluster`` spawns ``uplion gateway``, ``uplion worker`` and ``uplion billing`` processes on it
and on a PostgreSQL database, waits until they serve, and stops every one of them at the end.
It also reads the state the tests wait on: the usage stream's backlog, a quota counter, the
tasks a worker holds, the billed totals in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests import helpers
from tests.ports import free_port
from tests.redisio.server import RedisProcess
from uplion import billing
from uplion.accounts import db

START_TIMEOUT_S = 60.0
MODELS = Path(__file__).parent / "models.yaml"
USAGE_STREAM, USAGE_GROUP = "uplion:usage", "billing"  # docs/accounts.md, "Billing"


@dataclass(frozen=True)
class Totals:
    """What PostgreSQL billed: requests (all, and those that failed) and tokens."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def answered(self) -> int:
        """Requests billed as answered (status below 400)."""
        return self.requests - self.errors

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Cluster:
    """The processes of one test, on ``redis`` and the PostgreSQL database ``database_url``
    (migrated, with a first admin, on creation). Workers give up a dead worker's tasks after 1 s
    (the broker's visibility timeout); the aggregator flushes every 0.2 s."""

    tmp: Path
    redis: RedisProcess
    database_url: str
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateways: dict[str, str] = field(default_factory=dict)
    """Gateway name -> its base URL."""
    env: dict[str, str] = field(init=False)
    admin_token: str = field(init=False)

    def __post_init__(self) -> None:
        self.env = {
            "UPLION_REDIS_URL": self.redis.url, "UPLION_DATABASE_URL": self.database_url,
            "UPLION_DATA_DIR": str(self.tmp / "data"), "UPLION_BILLING_FLUSH_SECONDS": "0.2",
            "UPLION_METRICS_REFRESH_S": "0.2",
        }
        self.admin_token = helpers.bootstrap_store(self.tmp, self.env)

    @property
    def broker_url(self) -> str:
        return f"{self.redis.url}?visibility_timeout_s=1"

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def start(self, gateways: int, workers: dict[str, str]) -> None:
        """Spawn the processes at once (their start-ups overlap), then wait until each serves:
        ``gateways`` gateways (``gw1``, ``gw2``, ...), ``workers`` (name -> model of
        ``MODELS``) and the billing aggregator (``billing``)."""
        waits: list[tuple[str, str]] = []  # name, readiness URL
        for index in range(1, gateways + 1):
            name, port = f"gw{index}", free_port()
            self.spawn(name, "gateway", "--models", str(MODELS), "--broker", self.broker_url,
                        "--port", str(port))
            self.gateways[name] = f"http://127.0.0.1:{port}"
            waits.append((name, f"{self.gateways[name]}/v2/health/ready"))
        for name, model in workers.items():
            port = free_port()
            self.spawn(name, "worker", "--models", str(MODELS), "--broker", self.broker_url,
                        "--model", model, "--name", name,
                        env={"UPLION_HEALTH_PORT": str(port), "UPLION_LOG_LEVEL": "info"})
            waits.append((name, f"http://127.0.0.1:{port}/readyz"))
        self.spawn("billing", "billing", env={"UPLION_LOG_LEVEL": "info"})
        for name, url in waits:
            self.wait_ready(name, url)

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Run ``uplion <args>`` as ``name`` on this cluster's Redis and database."""
        self.processes[name] = helpers.spawn(*args, log=self.log(name),
                                             env={**self.env, **(env or {})})

    def wait_ready(self, name: str, url: str) -> None:
        """Wait until ``url`` answers 200 (fails the test if ``name`` exits or is too slow)."""
        process = self.processes[name]
        give_up = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < give_up:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n"
                            f"{self.log(name).read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"{name} did not become ready in {START_TIMEOUT_S:.0f} s:\n"
                    f"{self.log(name).read_text()[-4000:]}")

    def exited(self) -> dict[str, int]:
        """The processes that are not running any more, with their exit status."""
        return {name: process.returncode for name, process in self.processes.items()
                if process.poll() is not None}

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def pause(self, name: str) -> None:
        """Freeze ``name`` (SIGSTOP): it holds its connections and does nothing."""
        self.processes[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGCONT)

    def stop(self, name: str) -> int:
        """SIGTERM ``name`` (paused or not) and wait for it; its exit status."""
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
        return helpers.stop(process)

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    # -- accounts

    def token(self, *, quota: dict[str, Any] | None = None,
              limits: dict[str, Any] | None = None) -> tuple[str, str]:
        """A new user's API token (through a gateway's admin API): its id and the token."""
        base = next(iter(self.gateways.values()))
        admin = {"Authorization": f"Bearer {self.admin_token}"}
        user = httpx.post(f"{base}/admin/users", headers=admin,
                          json={"name": f"user-{free_port()}"}, timeout=10)
        assert user.status_code == 201, user.text
        body: dict[str, Any] = {"user_id": user.json()["id"]}
        if quota is not None:
            body["quota"] = quota
        if limits is not None:
            body["limits"] = limits
        made = httpx.post(f"{base}/admin/tokens", headers=admin, json=body, timeout=10)
        assert made.status_code == 201, made.text
        return made.json()["id"], made.json()["token"]

    # -- what the tests wait on and compare

    def usage_backlog(self) -> int | None:
        """Usage events in Redis that no aggregator has applied yet (waiting or read but not
        acked); ``None`` while Redis does not answer or has no billing group."""
        client = self.redis.client()
        try:
            groups = client.xinfo_groups(USAGE_STREAM)
        except redis.RedisError:
            return None
        finally:
            client.close()
        for group in groups:
            if group["name"] == USAGE_GROUP:
                lag = group.get("lag")
                return None if lag is None else int(lag) + int(group["pending"])
        return None

    def bill(self, within_s: float = 30) -> None:
        """Stop the gateways still running (each sends the usage events it buffered as it
        stops), then wait until the aggregator has applied every usage event in the stream:
        billing is complete, and nothing more can come."""
        for name in self.gateways:
            self.stop(name)
        self.wait_usage_applied(within_s)

    def wait_usage_applied(self, within_s: float = 30) -> None:
        """Until the aggregator has applied and acked every usage event in the stream."""
        give_up = time.monotonic() + within_s
        while self.usage_backlog() != 0:
            if time.monotonic() > give_up:
                pytest.fail(f"usage events still unapplied after {within_s:.0f} s "
                            f"(backlog {self.usage_backlog()}); billing log:\n"
                            f"{self.log('billing').read_text()[-3000:]}")
            time.sleep(0.05)

    def billed(self, token_id: str) -> Totals:
        """The totals PostgreSQL holds for ``token_id`` (today's hours, both sides of 0:00)."""
        return asyncio.run(_billed(self.database_url, token_id))

    def held_tasks(self, topic: str) -> dict[str, tuple[str, int]]:
        """The tasks of ``topic`` that workers hold (taken, not acknowledged): entry id ->
        (the worker holding it, how many times it was delivered)."""
        client = self.redis.client()
        try:
            entries = client.xpending_range(f"uplion:topic:{topic}", "workers", "-", "+", 1000)
        finally:
            client.close()
        return {str(entry["message_id"]): (str(entry["consumer"]), int(entry["times_delivered"]))
                for entry in entries}

    def quota_used(self, token_id: str) -> int:
        """Tokens charged to ``token_id``'s quota in Redis (every period's counter)."""
        client = self.redis.client()
        try:
            keys = list(client.scan_iter(f"uplion:quota:t:{token_id}:*"))
            return sum(int(client.get(key) or 0) for key in keys)
        finally:
            client.close()


async def _billed(database_url: str, token_id: str) -> Totals:
    database = db.Database(database_url)
    await database.start()
    try:
        now = datetime.now(UTC)
        rows = await billing.usage_report(database, now - timedelta(days=1),
                                          now + timedelta(days=1), token_id=token_id,
                                          group_by=())
    finally:
        await database.close()
    if not rows:
        return Totals()
    row = rows[0]
    return Totals(row.requests, row.errors, row.prompt_tokens, row.completion_tokens)


@contextlib.contextmanager
def running(tmp: Path, database_url: str) -> Iterator[Cluster]:
    """A cluster on a Redis of its own; every process and the Redis stopped at the end."""
    workdir = tmp / "redis"
    workdir.mkdir()
    server = RedisProcess(workdir, persist=False)
    cluster: Cluster | None = None
    try:
        cluster = Cluster(tmp, server, database_url)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop_all()
        server.stop()
