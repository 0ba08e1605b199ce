"""The one-machine runtime: broker, gateway and workers of every model in one process.

``uplion run`` uses it. On the embedded broker the workers live here, in the gateway's event loop;
the same code runs on Redis Streams, where separate ``uplion worker`` processes may also serve.
Replicas of a model share one loaded engine (weights are loaded once per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette

from uplion import broker, gateway, worker
from uplion.models import ModelSpec
from uplion.worker import engines

log = logging.getLogger(__name__)


class LocalPlatform:
    def __init__(self, broker_url: str, specs: list[ModelSpec]) -> None:
        self.broker = broker.connect(broker_url)
        self.specs = specs
        self.catalog = gateway.Catalog(specs)
        self.engines = {(spec.name, spec.version): engines.create(spec.engine) for spec in specs}
        self.workers: list[worker.Worker] = []
        self._runs: list[asyncio.Task[None]] = []

    def app(self, on_ready: Callable[[], None] | None = None) -> Starlette:
        """The gateway app; its lifespan starts the broker and the workers (then ``on_ready``)."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with self.running():
                if on_ready is not None:
                    on_ready()
                yield

        return gateway.create_app(self.broker, self.catalog, lifespan=lifespan)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        await self.broker.start()
        try:
            await self._start_workers()
            yield
        finally:
            await self._stop_workers()
            for engine in self.engines.values():
                await engine.close()
            await self.broker.close()

    async def _start_workers(self) -> None:
        for spec in self.specs:
            engine = self.engines[(spec.name, spec.version)]
            log.info("loading %s@%s (%s)", spec.name, spec.version, spec.engine.kind)
            await engine.load()
            for _ in range(spec.replicas.min):
                replica = worker.Worker(self.broker, spec, engine)
                self.workers.append(replica)
                self._runs.append(asyncio.create_task(replica.run(), name=replica.name))

    async def _stop_workers(self) -> None:
        for replica in self.workers:
            replica.stop()
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        self.workers.clear()
        self._runs.clear()
