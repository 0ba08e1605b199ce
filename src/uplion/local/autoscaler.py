"""Scales each model's local workers by its topic's backlog: the rule KEDA applies in a cluster.

Every ``interval_s`` it reads each topic's backlog, asks the model's ``ScaleDecider`` for a
replica count (up at once, down after ``idle_seconds``, to zero when ``min`` is 0) and has the
model's ``Replicas`` start, drain or restart workers towards it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from uplion import broker, protocol
from uplion.local.replicas import Replicas
from uplion.models import ModelSpec, ScaleDecider

log = logging.getLogger(__name__)


@dataclass
class Scaled:
    replicas: Replicas
    decider: ScaleDecider
    backlog: broker.Backlog = field(default_factory=lambda: broker.Backlog(0, 0))


class Autoscaler:
    def __init__(self, source: broker.Broker, models: list[Replicas], interval_s: float = 0.5):
        self.broker = source
        self.interval_s = interval_s
        self.models = [Scaled(replicas, ScaleDecider(replicas.spec.replicas))
                       for replicas in models]

    async def start(self) -> None:
        """Bring every model to its minimum (loading engines of those that keep workers)."""
        for model in self.models:
            await model.replicas.scale(model.replicas.spec.replicas.min)

    async def add(self, replicas: Replicas) -> None:
        """Scale one more model, starting its minimum at once."""
        self.models.append(Scaled(replicas, ScaleDecider(replicas.spec.replicas)))
        await replicas.scale(replicas.spec.replicas.min)

    async def replace(self, spec: ModelSpec) -> None:
        """New replica bounds or concurrency for a model: applied by restarting its replicas."""
        model = self._find(spec.name, spec.version)
        model.replicas.spec = spec
        model.decider = ScaleDecider(spec.replicas)
        await model.replicas.restart()

    async def remove(self, name: str, version: str) -> None:
        """Stop scaling a model and drain its workers."""
        model = self._find(name, version)
        self.models.remove(model)
        await model.replicas.close()

    def _find(self, name: str, version: str) -> Scaled:
        for model in self.models:
            if (model.replicas.spec.name, model.replicas.spec.version) == (name, version):
                return model
        raise KeyError(f"{name}@{version} is not scaled here")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for model in self.models:
                try:
                    await self._step(model)
                except Exception:
                    log.exception("scaling %s failed", model.replicas.spec.name)

    async def _step(self, model: Scaled) -> None:
        spec = model.replicas.spec
        model.backlog = await self.broker.backlog(
            protocol.topic_for(spec.name, spec.version), protocol.WORKER_GROUP
        )
        target = model.decider.decide(model.replicas.target, model.backlog.total, time.monotonic())
        await model.replicas.scale(target)

    async def close(self) -> None:
        for model in self.models:
            await model.replicas.close()
