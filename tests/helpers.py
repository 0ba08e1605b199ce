"""Start real uplion processes for tests and wait until they serve."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import free_port

DATA = Path(__file__).parent / "data"
ECHO_MODELS = DATA / "echo-models.yaml"
DEFAULT_MODELS = Path(__file__).parent.parent / "src" / "uplion" / "defaults" / "models.yaml"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).parent.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("UPLION_LOG_LEVEL", "warning")
    return env


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "uplion", *args], stdout=out, stderr=subprocess.STDOUT,
            env=_env(),
        )


def wait_ready(base_url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uplion exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/v2/health/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"uplion did not become ready in {timeout} s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def platform(
    tmp: Path, models: Path = ECHO_MODELS, broker_url: str = "memory://",
    command: str = "run", timeout: float = 60,
) -> Iterator[str]:
    """``uplion run`` (or ``gateway``) on a free port; yields its base URL."""
    port = free_port()
    log = tmp / f"{command}-{port}.log"
    process = spawn(command, "--models", str(models), "--broker", broker_url,
                    "--port", str(port), log=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, process, log, timeout)
        yield base_url
    finally:
        stop(process)
