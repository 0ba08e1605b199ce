"""The deployment API's backend in a cluster: a deployment is an ``AIModel`` object.

The object is named from the model's name and version (a DNS label) and that name is the
deployment's id. Its spec comes from the request: ``type: gpu`` puts ``gpus`` in
``resources.gpus``, ``request_res``/``limit_res`` become ``resources.requests``/``limits``,
``replicas`` becomes ``replicas.min``; the image and the broker are the backend's (the cluster's
settings: the CUDA image for ``type: gpu``, the CPU one else, a GPU request refused when no CUDA
image is configured; ``workers_broker`` makes the broker a Secret reference, never the gateway's
URL with its credentials). ``created_at`` is the object's ``creationTimestamp``; ``updated_at``
the annotation ``uplion.ai/updated-at`` written on every change. The operator does the rest.

A model's traffic split lives in one of its AIModels (``traffic_holder``): ``spec.version`` is the
stable version, ``spec.canary`` the canary and its weight. Promoting the canary moves its image
to ``spec.image``.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from uplion.broker import pulsar_names
from uplion.models import resource
from uplion.models.deployment import (
    Deployment,
    DeploymentBackend,
    DeploymentConflict,
    DeploymentNotFound,
    DeploymentPatch,
    DeploymentRequest,
    ResourceAmounts,
    TrafficSplit,
)
from uplion.models.spec import EngineSpec, FetchSpec, ModelSpec, ReplicaSpec
from uplion.operator import decide, kube
from uplion.operator import images as images_

UPDATED_AT = "uplion.ai/updated-at"
_MAX_NAME = 63


def object_name(name: str, version: str) -> str:
    """A DNS label for ``name`` and ``version``; cut, with a hash, when too long."""
    label = re.sub(r"[^a-z0-9-]+", "-", f"{name}-{version}".lower()).strip("-")
    if len(label) <= _MAX_NAME and label == f"{name}-{version}":
        return label
    digest = hashlib.sha256(f"{name}@{version}".encode()).hexdigest()[:8]
    return f"{label[: _MAX_NAME - 9].strip('-')}-{digest}"


def workers_broker(
    broker_url: str, url_secret: str, authentication_ref: str | None = None
) -> resource.Broker:
    """The broker of the AIModels a cluster gateway creates: the gateway's own (Redis Streams or
    Pulsar), whose workers read their URL from ``url_secret`` (``<secret>/<key>``, the setting
    ``UPLION_WORKERS_BROKER_SECRET``). Only what KEDA needs is taken from the gateway's URL: the
    Redis address, database and TLS, or Pulsar's admin URL, tenant and namespace."""
    name, slash, key = url_secret.partition("/")
    if not name or not slash or not key or "/" in key:
        raise ValueError("UPLION_WORKERS_BROKER_SECRET must be <secret>/<key>: the Secret key "
                         f"holding the workers' broker URL, not {url_secret!r}")
    ref = resource.SecretKeyRef(name=name, key=key)
    if broker_url.split(":", 1)[0] in pulsar_names.SCHEMES:
        pulsar = pulsar_names.parse_url(broker_url)
        return resource.Broker(
            kind="pulsar", url_secret_ref=ref, admin_url=pulsar.admin_url, tenant=pulsar.tenant,
            namespace=pulsar.namespace, authentication_ref=authentication_ref,
        )
    url = urllib.parse.urlsplit(broker_url)
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        raise ValueError("a cluster gateway's broker must be redis://, rediss:// or pulsar:// "
                         f"with a host, not {url.scheme}://{url.hostname or ''}")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return resource.Broker(
        kind="redis", url_secret_ref=ref, address=f"{host}:{url.port or 6379}",
        database=int(url.path.strip("/") or 0), tls=url.scheme == "rediss",
        authentication_ref=authentication_ref,
    )


def _amounts(amounts: ResourceAmounts) -> dict[str, int | str]:
    return {k: v for k, v in amounts.model_dump().items() if v is not None}


def _amounts_of(quantities: dict[str, int | str]) -> ResourceAmounts:
    return ResourceAmounts(**{k: str(quantities[k]) for k in ("cpu", "memory") if k in quantities})


def aimodel_spec(
    request: DeploymentRequest, image: str, broker: resource.Broker
) -> resource.AIModelSpec:
    """The AIModel spec a request asks for."""
    model = request.spec()
    return resource.AIModelSpec(
        name=model.name, version=model.version, source=model.source,
        fetch=resource.AIModelFetch.model_validate(model.fetch.model_dump()),
        engine=resource.AIModelEngine.model_validate(model.engine.model_dump()),
        serves=model.serves, concurrency=model.concurrency,
        max_batch_size=model.max_batch_size, max_batch_delay_ms=model.max_batch_delay_ms,
        replicas=resource.AIModelReplicas.model_validate(model.replicas.model_dump()),
        request_timeout_seconds=model.request_timeout_s, owned_by=model.owned_by,
        image=image, broker=broker,
        resources=resource.Resources(
            requests=_amounts(request.request_res), limits=_amounts(request.limit_res),
            gpus=request.gpus if request.type == "gpu" else 0,
        ),
    )


def request_of(spec: resource.AIModelSpec) -> DeploymentRequest:
    """The request an AIModel spec answers (``replicas`` is its ``replicas.min``)."""
    model = ModelSpec(
        name=spec.name, version=spec.version, source=spec.source,
        fetch=FetchSpec.model_validate(spec.fetch.model_dump(by_alias=False)),
        engine=EngineSpec(kind=spec.engine.kind, device=spec.engine.device,
                          trust_pickle=spec.engine.trust_pickle, options=spec.engine.options),
        serves=spec.serves, concurrency=spec.concurrency,
        max_batch_size=spec.max_batch_size, max_batch_delay_ms=spec.max_batch_delay_ms,
        replicas=ReplicaSpec.model_validate(spec.replicas.model_dump(by_alias=False)),
        request_timeout_s=spec.request_timeout_seconds, owned_by=spec.owned_by,
    )
    return DeploymentRequest(
        type="gpu" if spec.resources.gpus else "cpu", model=model, replicas=spec.replicas.min,
        request_res=_amounts_of(spec.resources.requests),
        limit_res=_amounts_of(spec.resources.limits),
        gpus=spec.resources.gpus,
    )


def deployment_of(aimodel: dict[str, Any]) -> Deployment:
    meta = aimodel["metadata"]
    updated = decide.parse_time((meta.get("annotations") or {}).get(UPDATED_AT))
    created = decide.parse_time(meta.get("creationTimestamp")) or updated or datetime.now(UTC)
    spec = resource.AIModelSpec.model_validate(aimodel["spec"])
    return Deployment(id=meta["name"], request=request_of(spec), created_at=created,
                      updated_at=updated or created)


def traffic_holder(aimodels: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The AIModel that holds the split of the model ``name``: the one with a canary, else the
    first listed."""
    serving = [a for a in aimodels if (a.get("spec") or {}).get("name") == name]
    with_canary = [a for a in serving if a["spec"].get("canary")]
    if with_canary:
        return with_canary[0]
    return serving[0] if serving else None


def traffic_patch(spec: dict[str, Any], split: TrafficSplit) -> dict[str, Any]:
    """The ``spec`` merge patch that makes an AIModel hold ``split``; each version keeps its
    image (the canary's ``image``, else ``spec.image``; none: the operator's)."""
    images = {spec.get("version", "1"): spec.get("image")}
    canary = spec.get("canary")
    if canary:
        images[canary["version"]] = canary.get("image") or spec.get("image")
    image = images.get(split.stable, spec.get("image"))
    changes: dict[str, Any] = {"version": split.stable, "image": image, "canary": None}
    if split.canary is not None:
        canary_image = images.get(split.canary, image)
        changes["canary"] = {"version": split.canary, "weight": split.weight,
                             "image": canary_image if canary_image != image else None}
    return changes


class KubernetesDeployments(DeploymentBackend):
    """Deployments as AIModel objects in one namespace."""

    def __init__(
        self, client: kube.Kube, namespace: str, image: str, broker: resource.Broker,
        gpu_image: str | None = None,
    ) -> None:
        """``image``: the workers' CPU image; ``gpu_image``: their CUDA image (``None``: a
        ``type: gpu`` request is refused)."""
        self.client = client
        self.namespace = namespace
        self.image = image
        self.gpu_image = gpu_image
        self.broker = broker

    async def create(self, request: DeploymentRequest) -> Deployment:
        image = self.image
        if request.type == "gpu" and request.gpus:
            if self.gpu_image is None:
                raise DeploymentConflict(
                    f"A deployment of type gpu needs the workers' CUDA image, and this gateway "
                    f"has none ({images_.GPU_SETTING}; charts/uplion's "
                    f"{images_.GPU_CHART_VALUE}): the CPU image never runs a GPU model.")
            image = self.gpu_image
        spec = aimodel_spec(request, image, self.broker)
        aimodel = {
            "apiVersion": kube.AIMODEL_API_VERSION,
            "kind": resource.KIND,
            "metadata": {
                "name": object_name(spec.name, spec.version),
                "namespace": self.namespace,
                "annotations": {UPDATED_AT: decide.timestamp(datetime.now(UTC))},
            },
            "spec": spec.model_dump(mode="json", exclude_none=True),
        }
        try:
            created = await self.client.create(aimodel)
        except kube.Conflict:
            raise DeploymentConflict(
                f"The model {spec.name}@{spec.version} is deployed already.") from None
        return deployment_of(created)

    async def list(self) -> list[Deployment]:
        return [deployment_of(a) for a in await self.client.list_aimodels(self.namespace)]

    async def get(self, deployment_id: str) -> Deployment:
        return deployment_of(await self._fetch(deployment_id))

    async def _fetch(self, deployment_id: str) -> dict[str, Any]:
        try:
            return await self.client.get_aimodel(self.namespace, deployment_id)
        except kube.NotFound:
            raise DeploymentNotFound(f"No deployment {deployment_id!r}.") from None

    async def update(self, deployment_id: str, patch: DeploymentPatch) -> Deployment:
        live = await self._fetch(deployment_id)
        try:
            updated = deployment_of(live).patched(patch)
        except ValueError as error:  # pydantic's ValidationError included
            raise DeploymentConflict(
                f"The change would make the deployment invalid: {error}") from None
        model = updated.request.spec()
        changed = await self.client.patch_aimodel(self.namespace, deployment_id, {
            "metadata": {"annotations": {UPDATED_AT: decide.timestamp(datetime.now(UTC))}},
            "spec": {"concurrency": model.concurrency, "replicas": resource.AIModelReplicas
                     .model_validate(model.replicas.model_dump()).model_dump(mode="json")},
        })
        return deployment_of(changed)

    async def delete(self, deployment_id: str) -> None:
        try:
            await self.client.delete_aimodel(self.namespace, deployment_id)
        except kube.NotFound:
            raise DeploymentNotFound(f"No deployment {deployment_id!r}.") from None

    async def set_traffic(self, name: str, split: TrafficSplit) -> None:
        holder = traffic_holder(await self.client.list_aimodels(self.namespace), name)
        if holder is None:
            raise DeploymentConflict(
                f"No AIModel in the namespace {self.namespace} serves the model {name!r} (the "
                "gateway's models file does): its traffic split cannot change.")
        await self.client.patch_aimodel(self.namespace, holder["metadata"]["name"], {
            "metadata": {"annotations": {UPDATED_AT: decide.timestamp(datetime.now(UTC))}},
            "spec": traffic_patch(holder["spec"], split),
        })
