"""A redis-server of a test's own, to stop, freeze and restart (the session's Redis stays up).

``RedisProcess`` runs redis-server on a free loopback port with a data folder and an append-only
file, so a restart on the same port keeps what was written (``restart(keep_data=False)`` starts
it empty); with ``persist=False`` it saves nothing, as a cache-only Redis: every ``stop`` and
``start`` loses everything. ``freeze``/``thaw`` stop and continue the process (SIGSTOP and
SIGCONT): a network partition without a reset, connections stay open and nothing answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.ports import free_port

_START_TIMEOUT_S = 10.0


class RedisProcess:
    def __init__(self, workdir: Path, *, persist: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make test`, which installs it")
        self._binary = binary
        self._workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._persistence = (["--appendonly", "yes", "--appendfsync", "always"] if persist
                             else ["--appendonly", "no"])
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None

    def client(self) -> redis.Redis:
        """A plain client, answering ``str``."""
        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)

    def start(self) -> None:
        self._process = subprocess.Popen(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self._workdir), "--save", "", *self._persistence,
             "--logfile", str(self._workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        give_up = time.monotonic() + _START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                    if time.monotonic() > give_up or self._process.poll() is not None:
                        self.stop()
                        pytest.fail(f"redis-server did not start: see {self._workdir}/redis.log")
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut the server down (it writes what it holds first); its port refuses connections."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a frozen server must be able to exit
            process.terminate()
            process.wait(timeout=10)

    def restart(self, *, keep_data: bool = True) -> None:
        self.stop()
        if not keep_data:
            for leftover in self._workdir.iterdir():
                if leftover.name != "redis.log":
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        self.start()

    def freeze(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server for this test alone, stopped at the end."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisProcess(workdir)
    yield server
    server.stop()
