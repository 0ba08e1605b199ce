"""``KubernetesDeployments``: the deployment API backed by AIModel objects, against kmock."""

from __future__ import annotations

import pytest

from uplion.models import resource
from uplion.models.deployment import (
    DeploymentConflict,
    DeploymentNotFound,
    DeploymentPatch,
    DeploymentRequest,
)
from uplion.operator import deployments, kube

BROKER = resource.Broker(kind="redis", url="redis://redis.uplion:6379/0")


@pytest.fixture
def backend(client: kube.Kube) -> deployments.KubernetesDeployments:
    return deployments.KubernetesDeployments(
        client, "models", "ghcr.io/uplion/uplion:0.1.0", BROKER,
        gpu_image="ghcr.io/uplion/uplion:0.1.0-cuda",
    )


def request() -> DeploymentRequest:
    return DeploymentRequest.model_validate({
        "type": "gpu", "gpus": 1, "replicas": 2,
        "model": {"name": "Llama_3", "version": "8b", "engine": {"kind": "test-echo"}},
        "request_res": {"cpu": "1", "memory": "4Gi"}, "limit_res": {"memory": "8Gi"},
    })


def test_names_are_dns_labels() -> None:
    assert deployments.object_name("smollm2", "1") == "smollm2-1"
    name = deployments.object_name("Llama_3", "8b")
    assert name.startswith("llama-3-8b-")
    assert len(name) == len("llama-3-8b-") + 8
    assert len(deployments.object_name("m" * 60, "v" * 60)) == 63


async def test_crud(backend: deployments.KubernetesDeployments) -> None:
    created = await backend.create(request())
    aimodel = await backend.client.get_aimodel("models", created.id)
    spec = resource.AIModelSpec.model_validate(aimodel["spec"])
    assert spec.resources.gpus == 1
    assert spec.image == "ghcr.io/uplion/uplion:0.1.0-cuda"
    assert spec.resources.requests == {"cpu": "1", "memory": "4Gi"}
    assert spec.resources.limits == {"memory": "8Gi"}
    assert (spec.replicas.min, spec.replicas.max) == (2, 2)
    assert created.request == request().model_copy(
        update={"model": request().spec()})

    with pytest.raises(DeploymentConflict):
        await backend.create(request())
    assert [d.id for d in await backend.list()] == [created.id]

    updated = await backend.update(created.id, DeploymentPatch(max_replicas=5, concurrency=9))
    assert updated.request.model.concurrency == 9
    assert updated.request.model.replicas.max == 5
    assert updated.updated_at >= created.updated_at
    assert (await backend.get(created.id)).request == updated.request

    await backend.delete(created.id)
    with pytest.raises(DeploymentNotFound):
        await backend.get(created.id)
    with pytest.raises(DeploymentNotFound):
        await backend.delete(created.id)
