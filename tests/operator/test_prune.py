"""The objects an AIModel no longer wants are deleted: a canary's Deployment and ScaledObject go
once the canary is promoted or rolled back; other models' objects and objects the operator did
not make stay. Against kmock's Kubernetes emulator, through the reconcile handler."""

from __future__ import annotations

import copy
from typing import Any, cast

import kopf
import pytest

from tests.operator import examples
from uplion.operator import handlers, kube

NS = examples.NAMESPACE
OWNED = [("apps/v1", "Deployment"), ("keda.sh/v1alpha1", "ScaledObject")]


async def reconcile(client: kube.Kube, name: str) -> None:
    body = await client.get_aimodel(NS, name)
    await handlers.reconcile(body=kopf.Body(cast(kopf.RawBody, body)), patch=kopf.Patch(),
                             memo={"kube": client})


async def names(client: kube.Kube, api_version: str, kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in await client.list_objects(api_version, kind, NS)}


async def workloads(client: kube.Kube) -> dict[str, set[str]]:
    return {kind: await names(client, api, kind) for api, kind in OWNED}


def with_canary(name: str, uid: str) -> dict[str, Any]:
    aimodel = copy.deepcopy(examples.GPU_CANARY)
    aimodel["metadata"].update(name=name, uid=uid)
    return aimodel


@pytest.mark.parametrize(
    ("change", "stable_version"),
    [
        ({"canary": None}, "1"),  # rollback: the canary is dropped
        ({"version": "2", "image": "ghcr.io/uplion/uplion:0.2.0-cuda", "canary": None}, "2"),
    ],
    ids=["rollback", "promote"],
)
async def test_the_canary_workloads_go_when_the_canary_does(
    client: kube.Kube, change: dict[str, Any], stable_version: str
) -> None:
    await client.create(with_canary("llama", "uid-llama"))
    await reconcile(client, "llama")
    both = {"llama-worker", "llama-canary-worker"}
    assert await workloads(client) == {"Deployment": both, "ScaledObject": both}

    await client.patch_aimodel(NS, "llama", {"metadata": {"generation": 2}, "spec": change})
    await reconcile(client, "llama")

    assert await workloads(client) == {"Deployment": {"llama-worker"},
                                       "ScaledObject": {"llama-worker"}}
    stable = await client.get("apps/v1", "Deployment", NS, "llama-worker")
    assert stable["metadata"]["labels"]["uplion.ai/version"] == stable_version
    assert "llama-models" in await names(client, "v1", "ConfigMap")


async def test_other_models_and_foreign_objects_are_left_alone(client: kube.Kube) -> None:
    await client.create(with_canary("llama", "uid-llama"))
    await client.create(with_canary("other", "uid-other"))
    await reconcile(client, "llama")
    await reconcile(client, "other")
    foreign = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "llama-canary-worker-by-hand", "namespace": NS,
                     "labels": {"app.kubernetes.io/instance": "llama"}},
        "spec": {"selector": {"matchLabels": {"app": "x"}},
                 "template": {"metadata": {"labels": {"app": "x"}},
                              "spec": {"containers": [{"name": "x", "image": "x"}]}}},
    }
    await client.create(foreign)

    await client.patch_aimodel(NS, "llama", {"metadata": {"generation": 2},
                                             "spec": {"canary": None}})
    await reconcile(client, "llama")

    assert await names(client, "apps/v1", "Deployment") == {
        "llama-worker", "other-worker", "other-canary-worker", "llama-canary-worker-by-hand"}
    assert await names(client, "keda.sh/v1alpha1", "ScaledObject") == {
        "llama-worker", "other-worker", "other-canary-worker"}
