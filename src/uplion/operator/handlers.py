"""The kopf handlers: decide (``decide``, ``manifests``) and apply (``kube``); nothing else.

- An AIModel created, changed or found at start: its objects are applied, the objects it owns
  but no longer wants (a promoted or rolled-back canary's Deployment and ScaledObject) deleted
  (``prune``), and its status set, through kopf's ``patch`` (the framework writes it). An
  invalid spec: status Failed with reason ``InvalidSpec`` and ``kopf.PermanentError`` (no retry
  until the object changes, or the operator restarts); a spec no configured image may run (a
  GPU model and no CUDA image, ``images``): the same, with the refusal's reason (``NoGpuImage``).
  API errors: ``kopf.TemporaryError`` (retried).
- A worker's ``UplionUnrecoverable`` Event, or a change of a uplion Deployment (its
  availability): the owning AIModel's status is recomputed and patched when it differs.
- Every AIModel event: its phase goes to the operator's metrics (``memo["metrics"]``, if any).

The handlers are plain async functions; ``build_registry`` registers them for a kopf loop, and
tests call them directly with a ``kube.Kube`` in ``memo["kube"]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from uplion.models import resource
from uplion.operator import decide, images, kube, manifests, prune
from uplion.operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "uplion-operator"}
RETRY_DELAY_S = 30.0


def _client(memo: Mapping[str, Any]) -> kube.Kube:
    client = memo["kube"]
    if not isinstance(client, kube.Kube):
        raise TypeError("memo['kube'] must be a uplion.operator.kube.Kube")
    return client


async def _status(
    client: kube.Kube, aimodel: Mapping[str, Any], observed_generation: int | None
) -> dict[str, Any]:
    """The status an AIModel should have now."""
    namespace = aimodel["metadata"]["namespace"]
    try:
        deployment: dict[str, Any] | None = await client.get(
            "apps/v1", "Deployment", namespace, manifests.workload_name(aimodel))
    except kube.NotFound:
        deployment = None
    events = [
        event for event in await client.list_events(namespace, decide.UNRECOVERABLE)
        if event.get("involvedObject", {}).get("kind") == "Pod"
        and decide.owns_pod(aimodel, event["involvedObject"].get("name", ""))
    ]
    previous = (aimodel.get("status") or {}).get("conditions") or []
    warning = _image_warning(aimodel)
    decision = decide.phase_from(
        deployment, events, aimodel["metadata"].get("generation"), observed_generation, previous,
        image_warning=warning)
    return decide.status_of(decision, deployment, observed_generation)


def _image_warning(aimodel: Mapping[str, Any]) -> str | None:
    """The ``CudaImage`` warning of an AIModel's spec (none for an invalid spec, whose status
    says so already)."""
    try:
        spec = resource.AIModelSpec.model_validate(aimodel.get("spec") or {})
    except ValueError:
        return None
    return images.cuda_warning(spec)


async def reconcile(*, body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
    """Apply an AIModel's objects and set its status (create, update, resume)."""
    namespace = body["metadata"]["namespace"]
    generation = body["metadata"].get("generation")
    try:
        # The workers inherit the operator's tracing settings (memo["environ"] stands in for
        # tests) and run its images (memo["images"], set by run_operator) unless they name one.
        objects = manifests.all_objects(body, namespace, memo.get("environ", os.environ),
                                        memo.get("images"))
    except ValueError as error:  # pydantic's ValidationError included
        reason = error.reason if isinstance(error, images.ImageRefused) else "InvalidSpec"
        decision = decide.failed_spec(error, generation, reason=reason)
        patch.status.update(decide.status_of(decision, None, generation))
        what = "invalid spec" if reason == "InvalidSpec" else f"refused ({reason})"
        raise kopf.PermanentError(f"{what}: {error}") from error
    client = _client(memo)
    try:
        for obj in objects:
            await client.apply(obj)
        await prune.prune(client, body, objects)
        # kopf's body can predate the status this handler set a moment ago (two handling cycles
        # in a row): the conditions come from the object as stored, so that the time a
        # generation was applied stays put and a worker's failure since then still counts.
        stored = await client.get_aimodel(namespace, body["metadata"]["name"])
        status = await _status(client, {**body, "status": stored.get("status")}, generation)
    except kube.ApiError as error:
        raise kopf.TemporaryError(str(error), delay=RETRY_DELAY_S) from error
    patch.status.update(status)


async def _refresh(client: kube.Kube, aimodel: Mapping[str, Any]) -> None:
    current = aimodel.get("status") or {}
    observed = current.get("observedGeneration")
    if observed is None:
        return  # not reconciled yet: the reconcile handler sets the first status
    status = await _status(client, aimodel, observed)
    if not kube.contains(current, status):
        meta = aimodel["metadata"]
        await client.patch_aimodel_status(meta["namespace"], meta["name"], status)
        log.info("%s/%s is %s: %s", meta["namespace"], meta["name"], status["phase"],
                 status["message"])


def is_unrecoverable(*, body: kopf.Body, **_: Any) -> bool:
    return body.get("reason") == decide.UNRECOVERABLE


async def worker_failed(*, body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """A worker's ``UplionUnrecoverable`` Event: its AIModel's status is recomputed."""
    involved = body.get("involvedObject", {})
    if type == "DELETED" or involved.get("kind") != "Pod":
        return
    client = _client(memo)
    namespace = involved.get("namespace") or body["metadata"]["namespace"]
    for aimodel in await client.list_aimodels(namespace):
        if decide.owns_pod(aimodel, involved.get("name", "")):
            await _refresh(client, aimodel)
            return
    log.debug("no AIModel owns pod %s/%s", namespace, involved.get("name"))


async def deployment_changed(*, body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """A uplion Deployment changed (its availability): its AIModel's status is recomputed."""
    if type == "DELETED":
        return
    client = _client(memo)
    for owner in body["metadata"].get("ownerReferences") or []:
        if owner.get("kind") == resource.KIND:
            try:
                aimodel = await client.get_aimodel(body["metadata"]["namespace"], owner["name"])
            except kube.NotFound:
                return
            await _refresh(client, aimodel)


async def aimodel_seen(*, body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """Show an AIModel's phase (as its status says) in the operator's metrics."""
    metrics: OperatorMetrics | None = memo.get("metrics")
    if metrics is None:
        return
    meta = body["metadata"]
    phase = None if type == "DELETED" else (body.get("status") or {}).get("phase")
    if phase is not None or type == "DELETED":
        metrics.show(meta["namespace"], meta["name"], phase)


async def startup(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Keep kopf's bookkeeping in annotations (the CRD's status schema prunes the rest)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="uplion.ai")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="uplion.ai")
    if "kube" not in memo:
        memo["kube"] = await kube.Kube.connect()


async def cleanup(*, memo: Any, **_: Any) -> None:
    await _client(memo).close()


def build_registry() -> kopf.OperatorRegistry:
    """A registry holding every handler of the operator, and kopf's own login handlers (the
    pod's service account, else a kubeconfig): a new ``OperatorRegistry`` has none, and the
    operator could never authenticate."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_with_service_account)
    kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
    aimodels = (resource.GROUP, resource.VERSION, resource.PLURAL)
    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.on.create(*aimodels, registry=registry)(reconcile)
    kopf.on.update(*aimodels, registry=registry)(reconcile)
    kopf.on.resume(*aimodels, registry=registry)(reconcile)
    kopf.on.event(*aimodels, registry=registry)(aimodel_seen)
    kopf.on.event("", "v1", "events", when=is_unrecoverable, registry=registry)(worker_failed)
    kopf.on.event("apps", "v1", "deployments", labels=MANAGED_BY,
                  registry=registry)(deployment_changed)
    return registry
