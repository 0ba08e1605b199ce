"""``/metrics``: admins only on the public port, or a port of its own; figures read from a cache
that a background task refreshes, so a scrape never waits on (or fails with) the broker."""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests import helpers
from tests.ports import free_port

BACKLOG = 'uplion_topic_backlog{state="waiting",topic="model.echo@1"}'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("metrics"),
                          env={"UPLION_METRICS_REFRESH_S": "0.1"}) as running:
        yield running


def wait_for_line(served: helpers.Served, line: str) -> None:
    seen = ""
    for _ in range(200):
        seen = httpx.get(f"{served.url}/metrics", headers=served.headers).text
        if line in seen:
            return
        time.sleep(0.05)
    raise AssertionError(f"{line!r} never appeared in:\n{seen}")


def member_token(served: helpers.Served) -> str:
    user = httpx.post(f"{served.url}/admin/users", headers=served.headers,
                      json={"name": "metrics-member"}).json()
    created = httpx.post(f"{served.url}/admin/tokens", headers=served.headers,
                         json={"user_id": user["id"], "allowed_models": ["echo"]})
    return str(created.json()["token"])


def test_the_public_port_shows_metrics_to_admins_only(served: helpers.Served) -> None:
    anonymous = httpx.get(f"{served.url}/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "missing_api_key"
    member = httpx.get(f"{served.url}/metrics",
                       headers={"Authorization": f"Bearer {member_token(served)}"})
    assert member.status_code == 403
    assert member.json()["error"]["code"] == "insufficient_permissions"
    admin = httpx.get(f"{served.url}/metrics", headers=served.headers)
    assert admin.status_code == 200
    assert admin.headers["content-type"].startswith("text/plain")
    assert BACKLOG in admin.text


def test_the_backlog_follows_the_topics(served: helpers.Served) -> None:
    """too-slow has 4 slots and answers nothing within its 1 s deadline: 6 requests hold its
    slots, and the figures a scrape reads follow that, and follow it back to idle."""
    body = {"model": "too-slow", "messages": [{"role": "user", "content": "a b c d e f"}]}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = [pool.submit(httpx.post, f"{served.url}/v1/chat/completions", json=body,
                               headers=served.headers, timeout=30) for _ in range(6)]
        wait_for_line(served,
                      'uplion_topic_backlog{state="in_flight",topic="model.too-slow@1"} 4.0')
        assert {answer.result().status_code for answer in answers} == {504}
    wait_for_line(served, 'uplion_topic_backlog{state="in_flight",topic="model.too-slow@1"} 0.0')


def test_metrics_on_their_own_port(tmp_path: Path) -> None:
    port = free_port()
    with helpers.platform(tmp_path, env={"UPLION_METRICS_PORT": str(port)}) as running:
        chat = httpx.post(f"{running.url}/v1/chat/completions", headers=running.headers, json={
            "model": "echo", "messages": [{"role": "user", "content": "counted"}]})
        assert chat.status_code == 200
        public = httpx.get(f"{running.url}/metrics", headers=running.headers)
        assert public.status_code == 404
        assert public.json()["error"]["code"] == "unknown_url"
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200
        assert ('uplion_requests_total{model="echo",protocol="openai-chat",status="200",'
                'version="1"} 1.0') in scraped.text
        assert BACKLOG in scraped.text
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 404


@contextlib.contextmanager
def own_redis(folder: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own, to stop while a gateway uses it."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed"
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            assert process.poll() is None, "redis-server exited"
            time.sleep(0.05)
        yield url, process
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.redis
def test_a_scrape_needs_no_broker(tmp_path: Path) -> None:
    port = free_port()
    with own_redis(tmp_path) as (url, redis_server):
        env = {"UPLION_DATA_DIR": str(tmp_path / "data"), "UPLION_METRICS_PORT": str(port)}
        helpers.bootstrap_store(tmp_path, env)
        with helpers.platform(tmp_path, broker_url=url, command="gateway", env=env):
            before = httpx.get(f"http://127.0.0.1:{port}/metrics")
            assert BACKLOG in before.text
            redis_server.kill()
            redis_server.wait()
            during = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert during.status_code == 200
            assert BACKLOG in during.text
