"""What the gateway and broker add to a trivial request: uplion vs a bare ASGI app (the floor).

For the floor, the memory broker and the Redis broker, at concurrency 1, 16 and 64, it prints
requests/s, p50/p99 and maximum latency measured by `wrk` (Debian's package; `make bench`
installs it) against a one-word chat completion on the test-echo engine, and the added p50 and
p99 over the floor (the goal at one connection: p99 at most 2 ms above it, no request over 10 ms).
Each broker is measured twice: with a token that has no limits ("auth": authentication only)
and with a token that has requests- and tokens-per-minute limits and a quota ("limits": one
admission script and one settlement per request; in Redis for the Redis run).

    .venv/bin/python -m bench.overhead [--duration 5] [--concurrency 1,16,64]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.services import free_port, redis_server

ROOT = Path(__file__).resolve().parent.parent
MODELS = """models:
  - name: echo
    engine: {kind: test-echo}
    concurrency: 64
"""
LUA = """wrk.method = "POST"
wrk.body = '{"model":"echo","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer TOKEN"
"""
HIGH_LIMITS = {"limits": {"requests_per_minute": 100_000_000, "tokens_per_minute": 10**12},
               "quota": {"tokens": 10**15, "period": "month"}}
_TOKEN = re.compile(r"^\s+(upl-[0-9a-f]+-\S+)$", re.MULTILINE)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Figures:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def _env(data_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, UPLION_LOG_LEVEL="warning")
    if data_dir is not None:
        env["UPLION_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
    return env


@contextlib.contextmanager
def server(
    command: list[str], port: int, ready_path: str, log: Path, data_dir: Path | None = None
) -> Iterator[str]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=_env(data_dir)
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not start:\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=1).status_code < 500:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def tokens(url: str, log: Path) -> dict[str, str]:
    """The first admin's token (no limits) and a new token with limits and a quota."""
    found = _TOKEN.search(log.read_text())
    if found is None:
        raise RuntimeError(f"no admin token in the log:\n{log.read_text()}")
    admin = {"Authorization": f"Bearer {found.group(1)}"}
    user = httpx.post(f"{url}/admin/users", headers=admin, json={"name": "bench"}).json()
    limited = httpx.post(f"{url}/admin/tokens", headers=admin,
                         json={"user_id": user["id"], **HIGH_LIMITS}).json()
    return {"auth": found.group(1), "limits": limited["token"]}


def wait_for_model(url: str, token: str, model: str = "echo", timeout_s: float = 120.0) -> None:
    """Wait until ``model`` has a worker serving it: the gateway is ready before its workers
    are (on Redis they are processes that take seconds to start), and a measurement that began
    earlier would time their start-up, not the request path."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {token}"}
    while httpx.get(f"{url}/v2/models/{model}/ready", headers=headers).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"model {model} was not ready within {timeout_s:.0f} s")
        time.sleep(0.1)


def wrk(url: str, concurrency: int, duration: int, script: Path) -> Figures:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", "-s", str(script),
         f"{url}/v1/chat/completions"],
        check=True, capture_output=True, text=True,
    ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"errors during the run:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return Figures(rps, _percentile(output, "50"), _percentile(output, "99"), _max(output))


def _percentile(output: str, which: str) -> float:
    match = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {which}% latency in wrk's output:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _max(output: str) -> float:
    match = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no maximum latency in wrk's output:\n{output}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def measure(url: str, levels: list[int], duration: int, script: Path) -> dict[int, Figures]:
    wrk(url, 4, 1, script)  # warm-up
    return {level: wrk(url, level, duration, script) for level in levels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated levels")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench installs it)")
    levels = [int(level) for level in args.concurrency.split(",")]
    results: dict[str, dict[int, Figures]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        models = workdir / "models.yaml"
        models.write_text(MODELS)
        script = workdir / "post.lua"
        script.write_text(LUA.replace("Bearer TOKEN", ""))
        port = free_port()
        floor = [sys.executable, "-m", "uvicorn", "bench.floor:app", "--port", str(port),
                 "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                 "--no-access-log"]
        with server(floor, port, "/", workdir / "floor.log") as url:
            results["floor"] = measure(url, levels, args.duration, script)
        with redis_server(workdir) as redis_url:
            for name, broker_url in (("memory", "memory://"), ("redis", redis_url)):
                port = free_port()
                command = [sys.executable, "-m", "uplion", "run", "--models", str(models),
                           "--broker", broker_url, "--port", str(port)]
                log = workdir / f"{name}.log"
                with server(command, port, "/v2/health/ready", log, workdir / name) as url:
                    by_kind = tokens(url, log)
                    wait_for_model(url, by_kind["auth"])
                    for kind, token in by_kind.items():
                        authorized = workdir / f"{name}-{kind}.lua"
                        authorized.write_text(LUA.replace("TOKEN", token))
                        results[f"{name}+{kind}"] = measure(url, levels, args.duration, authorized)
    print(f"{'target':<14} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'+p50 ms':>8} {'+p99 ms':>8}")
    for name, by_level in results.items():
        for level, figures in by_level.items():
            base = results["floor"][level]
            print(f"{name:<14} {level:>5} {figures.rps:>9.0f} {figures.p50_ms:>8.3f} "
                  f"{figures.p99_ms:>8.3f} {figures.max_ms:>8.2f} "
                  f"{figures.p50_ms - base.p50_ms:>+8.3f} {figures.p99_ms - base.p99_ms:>+8.3f}")


if __name__ == "__main__":
    main()
