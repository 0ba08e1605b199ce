"""The one-machine runtime: broker, gateway, workers and billing of every model in one process.

``uplion run`` uses it. On the embedded broker the workers live here, in the gateway's event loop;
the same code runs on Redis Streams, where separate ``uplion worker`` processes may also serve.
Replicas of a model share one loaded engine (weights are loaded once per process). The account
store is migrated on start, and on an empty store the first admin and its token are created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette

from uplion import billing, config, gateway, wiring, worker
from uplion.models import ModelSpec
from uplion.worker import engines

log = logging.getLogger(__name__)

ReadyHook = Callable[[str | None], None]


class LocalPlatform:
    def __init__(self, settings: config.Settings, specs: list[ModelSpec]) -> None:
        self.settings = settings
        self.backends = wiring.backends(settings)
        self.specs = specs
        self.catalog = gateway.Catalog(specs)
        self.engines = {(spec.name, spec.version): engines.create(spec.engine) for spec in specs}
        self.workers: list[worker.Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.aggregator = billing.Aggregator(
            self.backends.usage, self.backends.database,
            flush_events=settings.billing_flush_events,
            flush_seconds=settings.billing_flush_seconds,
        )

    def app(self, on_ready: ReadyHook | None = None) -> Starlette:
        """The gateway app; its lifespan starts everything, then calls ``on_ready`` with the
        first admin's token when this start created it (else ``None``)."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with self.running() as admin_token:
                if on_ready is not None:
                    on_ready(admin_token)
                yield

        backends = self.backends
        return gateway.create_app(
            backends.broker, self.catalog, principals=backends.principals,
            admission=backends.admission, usage=backends.usage, accounts=backends.accounts,
            database=backends.database, lifespan=lifespan,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str | None]:
        async with self.backends.running(migrate_first=True):
            admin_token = await self.backends.accounts.bootstrap_admin()
            self._tasks.append(asyncio.create_task(self.aggregator.run(), name="billing"))
            try:
                await self._start_workers()
                yield admin_token
            finally:
                await self._stop_workers()
                for engine in self.engines.values():
                    await engine.close()
                self.aggregator.stop()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                self._tasks.clear()

    async def _start_workers(self) -> None:
        for spec in self.specs:
            engine = self.engines[(spec.name, spec.version)]
            log.info("loading %s@%s (%s)", spec.name, spec.version, spec.engine.kind)
            await engine.load()
            for _ in range(spec.replicas.min):
                replica = worker.Worker(self.backends.broker, spec, engine)
                self.workers.append(replica)
                self._tasks.append(asyncio.create_task(replica.run(), name=replica.name))

    async def _stop_workers(self) -> None:
        for replica in self.workers:
            replica.stop()
        self.workers.clear()
