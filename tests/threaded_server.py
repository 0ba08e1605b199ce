"""An ASGI app served by uvicorn on a thread of its own, for the stand-ins of remote services.

Its own thread means its own event loop: the stand-in's latency never blocks the test's loop.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Self

import uvicorn
from starlette.types import ASGIApp

from tests.ports import free_port


class ThreadedServer:
    """``with Subclass(...) as server:`` serves ``app`` at ``server.url`` on a free port."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, log_level="critical",
            lifespan="off", ws="none", loop="asyncio", timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the {self.name} did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(10)
