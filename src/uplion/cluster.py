"""The gateway's view of a cluster: the models it routes follow the AIModel objects.

A gateway started with ``UPLION_DEPLOYMENTS=kubernetes`` lists the AIModels of its namespace
every few seconds and adds, changes or removes the routes of the model versions they serve
(a canary version too). Models of the gateway's own models file stay as they are.

Each model's traffic split follows the AIModel that holds it (``traffic_holder``): its
``spec.version`` is the stable version, its ``spec.canary`` the canary and its weight. So a
change through ``/admin/models/{name}/traffic``, which patches that AIModel, reaches every
gateway at its next sync.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pydantic

from uplion.gateway import Catalog
from uplion.models import ModelSpec, resource
from uplion.models.deployment import TrafficSplit
from uplion.operator import kube
from uplion.operator.deployments import traffic_holder

log = logging.getLogger(__name__)

Key = tuple[str, str]


class AIModelRoutes:
    def __init__(self, client: kube.Kube, namespace: str | None, catalog: Catalog) -> None:
        self.client = client
        self.namespace = namespace
        self.catalog = catalog
        self._served: dict[Key, ModelSpec] = {}

    async def sync(self) -> None:
        wanted: dict[Key, ModelSpec] = {}
        valid: list[tuple[dict[str, Any], resource.AIModelSpec]] = []
        for aimodel in await self.client.list_aimodels(self.namespace):
            name = aimodel.get("metadata", {}).get("name")
            try:
                declared = resource.AIModelSpec.model_validate(aimodel.get("spec", {}))
                versions = [None] + ([declared.canary.version] if declared.canary else [])
                for version in versions:
                    served = resource.worker_spec(declared, version)
                    wanted[(served.name, served.version)] = served
            except (pydantic.ValidationError, ValueError) as error:
                log.warning("AIModel %s is not routed: %s", name, error)
                continue
            valid.append((aimodel, declared))
        for key, spec in wanted.items():
            known = self._served.get(key)
            if known is None:
                if self.catalog.resolve(*key) is not None:
                    continue  # the models file serves it already
                self.catalog.add(spec)
                log.info("routing %s@%s (from its AIModel)", *key)
            elif known != spec:
                self.catalog.replace(spec)
            self._served[key] = spec
        for key in set(self._served) - set(wanted):
            self.catalog.remove(*key)
            del self._served[key]
            log.info("no longer routing %s@%s (its AIModel is gone)", *key)
        for model, split in _splits(valid).items():
            if self.catalog.split(model) == split:
                continue
            try:
                self.catalog.set_split(model, split)
                log.info("traffic of %s: %s", model, split)
            except (LookupError, ValueError) as error:
                log.warning("the traffic split of %s is not applied: %s", model, error)

    async def follow(self, interval_s: float = 5.0) -> None:
        while True:
            try:
                await self.sync()
            except kube.ApiError as error:
                log.warning("listing AIModels failed: %s", error)
            await asyncio.sleep(interval_s)


def _splits(
    aimodels: list[tuple[dict[str, Any], resource.AIModelSpec]],
) -> dict[str, TrafficSplit]:
    """Each model's split, from the AIModel that holds it."""
    objects = [aimodel for aimodel, _ in aimodels]
    splits = {}
    for aimodel, declared in aimodels:
        if traffic_holder(objects, declared.name) is aimodel:
            canary = declared.canary
            splits[declared.name] = TrafficSplit(
                declared.version, canary.version if canary else None,
                canary.weight if canary else 0)
    return splits
