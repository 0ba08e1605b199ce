"""The deployment API's backend on one machine: a deployment is a model the runtime serves.

Creating one adds the model to the gateway's catalog and its replicas to the autoscaler (which
starts ``min`` workers at once); deleting one drains its workers first. Deployments are kept in
``$UPLION_DATA_DIR/deployments.json`` and come back when ``uplion run`` starts again. Models of
the models file are not deployments: they cannot be changed or deleted here.

Each model's traffic split (its stable and canary versions, set through
``/admin/models/{name}/traffic``) is kept beside them in ``traffic.json`` and applied again on
start when its versions are still served, for the models of the models file too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from uplion import gateway
from uplion.local.autoscaler import Autoscaler
from uplion.local.replicas import Replicas
from uplion.models import ModelSpec
from uplion.models.deployment import (
    Deployment,
    DeploymentBackend,
    DeploymentConflict,
    DeploymentNotFound,
    DeploymentPatch,
    DeploymentRequest,
    TrafficSplit,
)
from uplion.worker import engines

log = logging.getLogger(__name__)


class LocalDeployments(DeploymentBackend):
    def __init__(
        self, catalog: gateway.Catalog, autoscaler: Autoscaler,
        replicas_for: Callable[[ModelSpec], Replicas], store: Path,
    ) -> None:
        self.catalog = catalog
        self.autoscaler = autoscaler
        self.replicas_for = replicas_for
        self.store = store
        self._deployments: dict[str, Deployment] = {}
        self._traffic: dict[str, TrafficSplit] = {}
        self._lock = asyncio.Lock()

    @property
    def traffic_store(self) -> Path:
        return self.store.with_name("traffic.json")

    async def restore(self) -> None:
        """Serve the deployments saved by an earlier run, then apply the saved splits."""
        saved = json.loads(self.store.read_text()) if self.store.exists() else []
        for raw in saved:
            deployment = Deployment.model_validate(raw)
            try:
                await self._serve(deployment.request.spec())
            except (DeploymentConflict, ValueError) as error:
                log.error("deployment %s not restored: %s", deployment.id, error)
                continue
            self._deployments[deployment.id] = deployment
        self._restore_traffic()

    def _restore_traffic(self) -> None:
        if not self.traffic_store.exists():
            return
        for name, raw in json.loads(self.traffic_store.read_text()).items():
            try:
                split = TrafficSplit.from_json(raw)
                self.catalog.set_split(name, split)
            except (LookupError, TypeError, ValueError) as error:
                log.warning("traffic split of %s not restored: %s", name, error)
                continue
            self._traffic[name] = split

    async def set_traffic(self, name: str, split: TrafficSplit) -> None:
        async with self._lock:
            self._traffic[name] = split
            self._save_traffic()

    async def create(self, request: DeploymentRequest) -> Deployment:
        async with self._lock:
            deployment = Deployment.new(request)
            await self._serve(request.spec())
            self._deployments[deployment.id] = deployment
            self._save()
        log.info("deployed %s as %s", request.spec().name, deployment.id)
        return deployment

    async def list(self) -> list[Deployment]:
        return list(self._deployments.values())

    async def get(self, deployment_id: str) -> Deployment:
        deployment = self._deployments.get(deployment_id)
        if deployment is None:
            raise DeploymentNotFound(f"No deployment {deployment_id!r}.")
        return deployment

    async def update(self, deployment_id: str, patch: DeploymentPatch) -> Deployment:
        async with self._lock:
            current = await self.get(deployment_id)
            try:
                updated = current.patched(patch)
            except ValueError as error:
                raise DeploymentConflict(
                    f"The change would make the deployment invalid: {error}"
                ) from None
            spec = updated.request.spec()
            self.catalog.replace(spec)
            await self.autoscaler.replace(spec)
            self._deployments[deployment_id] = updated
            self._save()
        return updated

    async def delete(self, deployment_id: str) -> None:
        async with self._lock:
            deployment = await self.get(deployment_id)
            spec = deployment.request.spec()
            self.catalog.remove(spec.name, spec.version)
            await self.autoscaler.remove(spec.name, spec.version)
            del self._deployments[deployment_id]
            self._save()
            if spec.name in self._traffic:  # keep the split the catalog fell back to
                split = self.catalog.split(spec.name)
                if split is None:
                    del self._traffic[spec.name]
                else:
                    self._traffic[spec.name] = split
                self._save_traffic()
        log.info("deleted deployment %s (%s@%s)", deployment_id, spec.name, spec.version)

    async def _serve(self, spec: ModelSpec) -> None:
        if self.catalog.resolve(spec.name, spec.version) is not None:
            raise DeploymentConflict(f"The model {spec.name}@{spec.version} is served already.")
        engines.check(spec.engine)  # reject unknown kinds and options before serving
        self.catalog.add(spec)
        await self.autoscaler.add(self.replicas_for(spec))

    def _save(self) -> None:
        _write(self.store, [d.model_dump(mode="json") for d in self._deployments.values()])

    def _save_traffic(self) -> None:
        _write(self.traffic_store, {n: s.as_json() for n, s in self._traffic.items()})


def _write(path: Path, data: object) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(data, indent=2))
    os.replace(staging, path)
