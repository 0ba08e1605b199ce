"""A gateway (uvicorn on a free port) and a worker in the test's own event loop, on a broker.

On ``memory://`` they share the embedded broker; on Redis the worker has a broker client of its
own, as a worker process would, so that tasks and replies make the real trip through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from tests.ports import free_port
from uplion import broker, config, gateway, wiring
from uplion.models import EngineSpec, ModelSpec
from uplion.worker import Worker
from uplion.worker.engines.base import Engine
from uplion.worker.engines.echo import EchoEngine

SPEC = ModelSpec(name="echo", engine=EngineSpec(kind="test-echo"), request_timeout_s=10)


@dataclass
class Served:
    url: str
    token: str
    backends: wiring.Backends

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10,
                                 headers={"Authorization": f"Bearer {self.token}"})


@contextlib.asynccontextmanager
async def serving(
    broker_url: str, tmp_path: Path, engine: Engine | None = None, spec: ModelSpec = SPEC,
) -> AsyncIterator[Served]:
    """Serve ``spec`` through ``broker_url`` with ``engine`` (default: test-echo); the admin's
    token and the backends (the usage stream, the database) come with it."""
    redis = broker_url.startswith("redis")
    backends = wiring.backends(config.Settings(
        broker_url=broker_url, redis_url=broker_url if redis else None,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'uplion.db'}"))
    async with backends.running(migrate_first=True), contextlib.AsyncExitStack() as stack:
        token = await backends.accounts.bootstrap_admin()
        assert token is not None
        worker_broker = backends.broker
        if redis:
            worker_broker = broker.connect(broker_url)
            await worker_broker.start()
            stack.push_async_callback(worker_broker.close)
        app = gateway.create_app(
            backends.broker, gateway.Catalog([spec]), principals=backends.principals,
            admission=backends.admission, usage=backends.usage, accounts=backends.accounts,
            database=backends.database,
        )
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                               lifespan="on", ws="none"))
        serving_task = asyncio.create_task(server.serve())
        worker = Worker(worker_broker, spec, engine or EchoEngine())
        running = asyncio.create_task(worker.run())
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110  # uvicorn offers a flag, no event
                await asyncio.sleep(0.01)
        try:
            yield Served(f"http://127.0.0.1:{port}", token, backends)
        finally:
            worker.stop()
            await running
            server.should_exit = True
            await serving_task
