"""The one-machine runtime: broker, gateway, workers and billing of every model, supervised.

``uplion run`` uses it. On the embedded broker the workers live here, in the gateway's event loop
(replicas of a model share one loaded engine); on Redis Streams they are ``uplion worker``
processes that this runtime starts and supervises. Either way the autoscaler holds each model at
the replica count its backlog asks for (to zero when idle, if ``min`` is 0). The account store is
migrated on start, and on an empty store the first admin and its token are created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette

from uplion import billing, config, gateway, wiring
from uplion.billing.metrics import BillingMetrics
from uplion.local.autoscaler import Autoscaler
from uplion.local.deployments import LocalDeployments
from uplion.local.replicas import InProcessReplicas, ProcessReplicas, Replicas
from uplion.models import ModelSpec
from uplion.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

ReadyHook = Callable[[str | None], None]


class LocalPlatform:
    def __init__(self, settings: config.Settings, specs: list[ModelSpec]) -> None:
        self.settings = settings
        self.backends = wiring.backends(settings)
        self.specs = specs
        self.catalog = gateway.Catalog(specs)
        self.worker_metrics = WorkerMetrics()  # in-process workers', served by the gateway
        self.autoscaler = Autoscaler(self.backends.broker, [self._replicas(s) for s in specs])
        self.deployments = LocalDeployments(
            self.catalog, self.autoscaler, self._replicas, config.data_dir() / "deployments.json"
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.billing_metrics = BillingMetrics()
        self.aggregator = billing.AggregatorThread(  # off the gateway's event loop
            self.backends.usage, self.backends.database_url,
            flush_events=settings.billing_flush_events,
            flush_seconds=settings.billing_flush_seconds, observe=self.billing_metrics.observe,
        )

    def _replicas(self, spec: ModelSpec) -> Replicas:
        if self.settings.broker_url.startswith("memory:"):
            return InProcessReplicas(self.backends.broker, spec, self.worker_metrics)
        return ProcessReplicas(
            self.backends.broker, spec, self.settings.broker_url, config.data_dir()
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
        app = gateway.create_app(
            backends.broker, self.catalog, principals=backends.principals,
            admission=backends.admission, usage=backends.usage, accounts=backends.accounts,
            database=backends.database, deployments=self.deployments, lifespan=lifespan,
            settings=self.settings,
        )
        app.state.uplion.metrics.include(self.billing_metrics.registry)
        if self.settings.broker_url.startswith("memory:"):
            app.state.uplion.metrics.include(self.worker_metrics.registry)
        return app

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str | None]:
        async with self.backends.running(migrate_first=True):
            admin_token = await self.backends.accounts.bootstrap_admin()
            self._tasks.append(asyncio.create_task(self.aggregator.run(), name="billing"))
            try:
                await self.autoscaler.start()
                await self.deployments.restore()
                self._tasks.append(asyncio.create_task(self.autoscaler.run(), name="autoscaler"))
                yield admin_token
            finally:
                self._tasks[-1].cancel()
                await self.autoscaler.close()
                self.aggregator.stop()
                await asyncio.gather(*self._tasks, return_exceptions=True)
                self._tasks.clear()
