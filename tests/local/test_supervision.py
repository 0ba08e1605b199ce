"""`uplion run` on Redis supervises worker processes: a killed worker is restarted; repeated
deaths mark the model Failed until a worker runs healthy again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import helpers

MODELS = """models:
  - name: echo
    engine: {kind: test-echo}
    concurrency: 4
    request_timeout_s: 20
"""


def worker_pids(under: Path) -> list[int]:
    """The worker processes whose models file (written by the runtime) lies under ``under``."""
    found = subprocess.run(["pgrep", "-f", f"uplion worker .*{under}"],
                           capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def echo_status(served: helpers.Served) -> dict[str, Any]:
    models = httpx.get(f"{served.url}/admin/models", headers=served.headers).json()["data"]
    status: dict[str, Any] = models[0]["status"]
    return status


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.redis
def test_killed_workers_are_restarted_and_crash_loops_fail_the_model(
    clean_redis: str, tmp_path: Path
) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(MODELS)
    with helpers.platform(tmp_path, models_file, clean_redis, timeout=90) as served:
        wait_for(lambda: echo_status(served)["phase"] == "Running", 30, "a running worker")
        [first] = worker_pids(tmp_path)

        os.kill(first, signal.SIGKILL)
        wait_for(lambda: worker_pids(tmp_path) not in ([], [first]), 20, "a restart")
        wait_for(lambda: echo_status(served)["phase"] == "Running", 30, "Running again")
        chat = {"model": "echo", "messages": [{"role": "user", "content": "back"}]}
        answer = httpx.post(f"{served.url}/v1/chat/completions", json=chat,
                            headers=served.headers, timeout=20)
        assert answer.status_code == 200

        for _ in range(2):  # with the first kill: three deaths within a minute
            wait_for(lambda: bool(worker_pids(tmp_path)), 30, "a worker to kill")
            for pid in worker_pids(tmp_path):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not worker_pids(tmp_path), 5, "the kill")
        wait_for(lambda: echo_status(served)["phase"] == "Failed", 15, "Failed")
        assert echo_status(served)["reason"] == "CrashLoopBackOff"
        wait_for(lambda: echo_status(served)["phase"] == "Running", 40, "recovery")
