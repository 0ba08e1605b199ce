"""A real Prometheus server for a test: Debian's ``prometheus`` on a free loopback port, its data
in the test's directory, scraping the targets it is given every second and evaluating uplion's
alert rules; stopped (and its data left behind) at the end."""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.monitoring import promtool
from tests.ports import free_port

READY_TIMEOUT_S = 30.0


class PrometheusServer:
    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(promtool.RULES)],
            "scrape_configs": scrape_configs,
        }))
        self.log = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [promtool.binary("prometheus"), f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        give_up = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < give_up:
            if self._process.poll() is not None:
                pytest.fail(f"prometheus exited with {self._process.returncode}:\n"
                            f"{self.log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"prometheus was not ready in {READY_TIMEOUT_S:.0f} s:\n"
                    f"{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=20)

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` answers now (its series with a finite value)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: a {data['resultType']}"
        return [series for series in data["result"]
                if not math.isnan(float(series["value"][1]))]

    def value(self, expr: str) -> float:
        found = self.query(expr)
        assert len(found) == 1, f"{expr}: {found}"
        return float(found[0]["value"][1])


@contextlib.contextmanager
def running(workdir: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[PrometheusServer]:
    workdir.mkdir(parents=True, exist_ok=True)
    server = PrometheusServer(workdir, scrape_configs)
    try:
        server.start()
        yield server
    finally:
        server.stop()
