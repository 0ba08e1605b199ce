"""Start real uplion processes for tests and wait until they serve."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.ports import free_port

DATA = Path(__file__).parent / "data"
ECHO_MODELS = DATA / "echo-models.yaml"
DEFAULT_MODELS = Path(__file__).parent.parent / "src" / "uplion" / "defaults" / "models.yaml"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    src = str(Path(__file__).parent.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("UPLION_LOG_LEVEL", "warning")
    return env


def spawn(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "uplion", *args], stdout=out, stderr=subprocess.STDOUT,
            env=_env(env),
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


@dataclass(frozen=True)
class Served:
    url: str
    admin_token: str | None
    log: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


_TOKEN = re.compile(r"^\s+(upl-[0-9a-f]+-\S+)$", re.MULTILINE)


@contextlib.contextmanager
def platform(
    tmp: Path, models: Path = ECHO_MODELS, broker_url: str = "memory://",
    command: str = "run", timeout: float = 60, env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """``uplion run`` (or ``gateway``) on a free port, with its own data dir (a fresh account
    store unless ``env`` names one); yields its URL and the first admin's token if it made one."""
    port = free_port()
    log = tmp / f"{command}-{port}.log"
    process = spawn(command, "--models", str(models), "--broker", broker_url,
                    "--port", str(port), log=log,
                    env={"UPLION_DATA_DIR": str(tmp / f"data-{port}"), **(env or {})})
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, process, log, timeout)
        found = _TOKEN.search(log.read_text())
        yield Served(base_url, found.group(1) if found else None, log)
    finally:
        stop(process)


def bootstrap_store(tmp: Path, env: dict[str, str]) -> str:
    """Migrate the store named by ``env`` and create its first admin; the admin's token."""
    result = subprocess.run(
        [sys.executable, "-m", "uplion", "admin", "bootstrap"], env=_env(env),
        capture_output=True, text=True, timeout=60, check=False,
    )
    found = _TOKEN.search(result.stdout)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"uplion admin bootstrap failed:\n{result.stdout}\n{result.stderr}")
    return found.group(1)
