"""``uplion rollout`` against a running platform: each step's output and exit status (0 passed,
1 a failed gate or a refusal, 2 a usage error or no gateway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests import helpers
from tests.ports import free_port
from uplion.cli import app

SRC = str(Path(__file__).parent.parent.parent / "src")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("rollout")) as platform:
        yield platform


def rollout(served: helpers.Served, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``uplion rollout ARGS`` in-process; the result, its JSON line parsed as ``.data``."""
    environment = {"UPLION_GATEWAY_URL": served.url, "UPLION_ADMIN_TOKEN": served.admin_token,
                   "UPLION_API_TOKEN": None, "UPLION_URL": None, "UPLION_TOKEN": None,
                   **(env or {})}
    result = CliRunner().invoke(app, ["rollout", *args], env=environment)
    lines = result.stdout.strip().splitlines()
    result.data = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return result


def test_smoke(served: helpers.Served) -> None:
    passed = rollout(served, "smoke", "--model", "echo", "--version", "2", "--requests", "3")
    assert passed.exit_code == 0, passed.output
    assert passed.stdout.startswith("smoke echo@2 (text-generation): 3/3 requests answered")
    assert passed.data["passed"] is True
    assert passed.data["succeeded"] == 3

    stable = rollout(served, "smoke", "-m", "echo-embed")  # the stable version; embeddings
    assert stable.exit_code == 0, stable.output
    assert (stable.data["version"], stable.data["serves"]) == ("1", "embedding")

    unknown = rollout(served, "smoke", "--model", "echo", "--version", "9")
    assert unknown.exit_code == 1
    assert "echo@9 is not served" in unknown.stderr

    slow = rollout(served, "smoke", "--model", "too-slow", "--version", "1", "--requests", "2")
    assert slow.exit_code == 1
    assert slow.data["succeeded"] == 0
    assert all(failure.startswith("request") and "504" in failure
               for failure in slow.data["failures"])
    assert "FAILED" in slow.stdout


def test_evaluate(served: helpers.Served) -> None:
    passed = rollout(served, "evaluate", "--model", "echo", "--version", "2", "--drive", "30")
    assert passed.exit_code == 0, passed.output
    assert passed.data["passed"] is True
    assert passed.data["requests"] >= 30
    assert passed.data["errors"] == 0
    assert 0 < passed.data["p50_ms"] <= passed.data["p95_ms"] < 2000

    too_slow = rollout(served, "evaluate", "--model", "echo", "--version", "2",
                       "--max-p95-ms", "0.001")
    assert too_slow.exit_code == 1
    assert too_slow.data["passed"] is False
    assert any("p95" in failure for failure in too_slow.data["failures"])

    quiet = rollout(served, "evaluate", "--model", "echo-slow", "--version", "1")
    assert quiet.exit_code == 1
    assert quiet.data["requests"] == 0
    assert "fewer than the 20 needed" in quiet.stdout

    failing = rollout(served, "evaluate", "--model", "too-slow", "--version", "1",
                      "--drive", "2", "--min-requests", "1")
    assert failing.exit_code == 1
    assert failing.data["error_rate"] == 1.0
    assert any("error rate" in failure for failure in failing.data["failures"])


def test_traffic_steps(served: helpers.Served) -> None:
    admin = httpx.Client(base_url=served.url, headers=served.headers, timeout=30)
    weighted = rollout(served, "set-weight", "--model", "echo", "--version", "2",
                       "--weight", "25")
    assert weighted.exit_code == 0, weighted.output
    assert weighted.stdout.startswith(
        "set-weight echo: stable 1, no canary -> echo: stable 1, canary 2 at 25 %")
    assert admin.get("/admin/models/echo/traffic").json()["canary"] == {
        "version": "2", "weight": 25}

    rolled_back = rollout(served, "rollback", "--model", "echo")
    assert rolled_back.exit_code == 0
    assert rolled_back.data["after"] == {"model": "echo", "stable": "1", "canary": None}

    promoted = rollout(served, "promote", "--model", "echo", "--version", "2")
    assert promoted.exit_code == 0
    assert admin.get("/admin/models/echo/traffic").json() == {
        "model": "echo", "stable": "2", "canary": None}
    rollout(served, "promote", "--model", "echo", "--version", "1")

    refused = rollout(served, "set-weight", "--model", "echo", "--version", "9", "--weight", "5")
    assert refused.exit_code == 1
    assert "no version `9`" in refused.stderr
    assert rollout(served, "promote", "--model", "nope", "--version", "1").exit_code == 1
    out_of_range = rollout(served, "set-weight", "-m", "echo", "-v", "2", "--weight", "101")
    assert out_of_range.exit_code == 2
    admin.close()


def test_setup_errors_exit_with_2(served: helpers.Served) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = rollout(served, "rollback", "--model", "echo", "--gateway", nowhere)
    assert unreachable.exit_code == 2
    assert "cannot reach the gateway" in unreachable.stderr
    no_token = rollout(served, "rollback", "-m", "echo", env={"UPLION_ADMIN_TOKEN": None})
    assert no_token.exit_code == 2
    assert "needs an admin token" in no_token.stderr
    wrong = rollout(served, "evaluate", "-m", "echo", "-v", "1", "--admin-token", "upl-0-no")
    assert wrong.exit_code == 2
    assert "refused the admin token" in wrong.stderr
    assert rollout(served, "evaluate", "-m", "echo").exit_code == 2  # --version is required


def test_a_workflow_step_as_a_process(served: helpers.Served) -> None:
    """How an Argo step runs it: a process, configured by the environment `uplion admin` reads."""
    env = {**os.environ, "PYTHONPATH": SRC, "UPLION_URL": served.url,
           "UPLION_TOKEN": served.admin_token or ""}
    env.pop("UPLION_GATEWAY_URL", None)
    env.pop("UPLION_ADMIN_TOKEN", None)

    def step(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "uplion", "rollout", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    weighted = step("set-weight", "--model", "echo", "--version", "2", "--weight", "10")
    assert weighted.returncode == 0, weighted.stderr
    assert json.loads(weighted.stdout.splitlines()[-1])["after"]["canary"]["weight"] == 10
    gate = step("evaluate", "--model", "echo", "--version", "2", "--drive", "20",
                "--max-p95-ms", "0.001")
    assert gate.returncode == 1
    verdict = json.loads(gate.stdout.splitlines()[-1])
    assert (verdict["passed"], verdict["max_p95_ms"]) == (False, 0.001)
    assert step("rollback", "--model", "echo").returncode == 0
