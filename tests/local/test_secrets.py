"""`uplion run` keeps the broker URL's credentials out of sight: not in its banner, not in the
command lines of the worker processes it starts (they read the URL from their environment)."""

from __future__ import annotations

import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests import helpers
from tests.ports import free_port
from uplion import config
from uplion.cli import serve
from uplion.models import ModelSpec

PASSWORD = "run-secret-5be1"
MODELS = """models:
  - name: echo
    engine: {kind: test-echo}
    request_timeout_s: 20
"""


def test_the_banner_shows_no_credentials() -> None:
    settings = config.Settings(broker_url=f"redis://admin:{PASSWORD}@redis.local:6379/0")
    banner = serve._banner(settings, [ModelSpec.model_validate(
        {"name": "echo", "engine": {"kind": "test-echo"}})])
    assert PASSWORD not in banner
    assert "redis://redis.local:6379/0" in banner


@pytest.fixture
def secret_url(clean_redis: str) -> Iterator[str]:
    """The session's Redis as a user with a password (full access, like a gateway's)."""
    admin = redis.Redis.from_url(clean_redis)
    admin.execute_command("ACL", "SETUSER", "runner", "reset", "on", f">{PASSWORD}", "~*", "&*",
                          "+@all")
    parts = urllib.parse.urlsplit(clean_redis)
    yield parts._replace(netloc=f"runner:{PASSWORD}@{parts.hostname}:{parts.port}").geturl()
    admin.execute_command("ACL", "DELUSER", "runner")
    admin.close()


def worker_command_lines(under: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-f", f"uplion worker .*{under}"],
                           capture_output=True, text=True, check=False)
    return found.stdout.splitlines()


@pytest.mark.redis
def test_worker_processes_get_the_broker_url_from_their_environment(
    secret_url: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "run.log"
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    process = helpers.spawn("run", "--models", str(models), "--port", str(port),
                            log=log, env={"UPLION_BROKER_URL": secret_url,
                                          "UPLION_DATA_DIR": str(tmp_path / "data")})
    url = f"http://127.0.0.1:{port}"
    try:
        helpers.wait_ready(url, process, log, 90)
        deadline = time.monotonic() + 30
        while not worker_command_lines(tmp_path / "data") and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = worker_command_lines(tmp_path / "data")
        assert lines, "no worker process was started"
        assert all(PASSWORD not in line and "--broker" not in line for line in lines), lines
        token = helpers._TOKEN.search(log.read_text())
        assert token is not None
        chat = {"model": "echo", "messages": [{"role": "user", "content": "kept secret"}]}
        answer = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=20,
                            headers={"Authorization": f"Bearer {token.group(1)}"})
        assert answer.status_code == 200, answer.text
    finally:
        helpers.stop(process)
    printed = log.read_text()
    assert PASSWORD not in printed
    assert "uplion is serving" in printed
