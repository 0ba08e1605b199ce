"""A worker process answers Kubernetes probes on UPLION_HEALTH_PORT, and exits 3 when its model
cannot be served."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest

from tests import helpers
from tests.ports import free_port


def _get(url: str) -> int | None:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code
    return None


@pytest.mark.redis
def test_worker_probes_and_drain(clean_redis: str, tmp_path: Path) -> None:
    port = free_port()
    process = helpers.spawn("worker", "--models", str(helpers.ECHO_MODELS), "--broker",
                            clean_redis, "--model", "echo", log=tmp_path / "worker.log",
                            env={"UPLION_HEALTH_PORT": str(port)})
    try:
        deadline = time.monotonic() + 20
        while _get(f"http://127.0.0.1:{port}/readyz") != 200:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
        assert _get(f"http://127.0.0.1:{port}/livez") == 200
        assert _get(f"http://127.0.0.1:{port}/nothing") == 404
    finally:
        assert helpers.stop(process) == 0


@pytest.mark.redis
def test_invalid_config_exits_3(clean_redis: str, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - name: broken\n    engine: {kind: test-echo, options: "
                      "{token_dealy_s: 1}}\n")
    process = helpers.spawn("worker", "--models", str(models), "--broker", clean_redis,
                            "--model", "broken", log=tmp_path / "worker.log")
    assert process.wait(30) == 3
    assert "token_dealy_s" in (tmp_path / "worker.log").read_text()
