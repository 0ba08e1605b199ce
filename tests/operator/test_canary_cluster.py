"""Canary routing in a cluster, against kmock: a traffic change patches the model's AIModel
(``spec.version``, ``spec.canary``), and the gateway's routes follow the AIModels' splits."""

from __future__ import annotations

from typing import Any

import pytest

from uplion import cluster
from uplion.gateway import Catalog
from uplion.models import resource
from uplion.models.deployment import DeploymentConflict, TrafficSplit
from uplion.operator import deployments, kube

IMAGE = "ghcr.io/uplion/uplion:0.1.0"
BROKER = resource.Broker(kind="redis", url="redis://redis:6379/0")


def aimodel(name: str, model: str, version: str = "1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": kube.AIMODEL_API_VERSION, "kind": "AIModel",
        "metadata": {"name": name, "namespace": "models"},
        "spec": {"name": model, "version": version, "engine": {"kind": "test-echo"},
                 "image": IMAGE, "broker": BROKER.model_dump(mode="json", exclude_none=True),
                 **spec},
    }




async def spec_of(client: kube.Kube, name: str) -> dict[str, Any]:
    found: dict[str, Any] = (await client.get_aimodel("models", name))["spec"]
    return found


async def test_a_traffic_change_patches_the_aimodel_and_routes_follow(client: kube.Kube) -> None:
    backend = deployments.KubernetesDeployments(client, "models", IMAGE, BROKER)
    catalog = Catalog([])
    routes = cluster.AIModelRoutes(client, "models", catalog)
    await client.create(aimodel(
        "chat-1", "chat", canary={"version": "2", "weight": 10, "image": "uplion:canary"}))
    await routes.sync()
    assert catalog.split("chat") == TrafficSplit("1", "2", 10)

    await backend.set_traffic("chat", TrafficSplit("1", "2", 50))
    patched = await spec_of(client, "chat-1")
    assert patched["canary"] == {"version": "2", "weight": 50, "image": "uplion:canary"}
    assert (await client.get_aimodel("models", "chat-1"))["metadata"]["annotations"][
        deployments.UPDATED_AT]
    await routes.sync()
    assert catalog.split("chat") == TrafficSplit("1", "2", 50)

    await backend.set_traffic("chat", TrafficSplit("1"))  # roll back
    patched = await spec_of(client, "chat-1")
    assert patched.get("canary") is None
    assert (patched["version"], patched["image"]) == ("1", IMAGE)
    await routes.sync()
    assert catalog.versions("chat") == ["1"]
    assert catalog.split("chat") == TrafficSplit("1")

    await client.patch_aimodel("models", "chat-1", {"spec": {
        "canary": {"version": "2", "weight": 0, "image": "uplion:canary"}}})
    await routes.sync()
    assert catalog.split("chat") == TrafficSplit("1", "2", 0)
    await backend.set_traffic("chat", TrafficSplit("2"))  # promote: the canary's image moves
    patched = await spec_of(client, "chat-1")
    assert (patched["version"], patched["image"], patched.get("canary")) == (
        "2", "uplion:canary", None)
    resource.AIModelSpec.model_validate(patched)
    await routes.sync()
    assert catalog.versions("chat") == ["2"]
    assert catalog.resolve("chat").spec.version == "2"  # type: ignore[union-attr]


async def test_a_model_without_an_aimodel_cannot_change(client: kube.Kube) -> None:
    backend = deployments.KubernetesDeployments(client, "models", IMAGE, BROKER)
    with pytest.raises(DeploymentConflict, match="No AIModel"):
        await backend.set_traffic("from-file", TrafficSplit("1"))


async def test_the_aimodel_with_a_canary_holds_the_split(client: kube.Kube) -> None:
    catalog = Catalog([])
    routes = cluster.AIModelRoutes(client, "models", catalog)
    await client.create(aimodel("chat-1", "chat"))
    await client.create(aimodel("chat-3", "chat", "3", canary={"version": "4", "weight": 20}))
    await routes.sync()
    assert set(catalog.versions("chat")) == {"1", "3", "4"}
    assert catalog.split("chat") == TrafficSplit("3", "4", 20)
    backend = deployments.KubernetesDeployments(client, "models", IMAGE, BROKER)
    await backend.set_traffic("chat", TrafficSplit("3", "4", 70))
    assert (await spec_of(client, "chat-3"))["canary"]["weight"] == 70
    assert (await spec_of(client, "chat-1")).get("canary") is None


def test_each_version_keeps_its_image_when_they_swap() -> None:
    spec = {"version": "1", "image": "one", "canary": {"version": "2", "weight": 5,
                                                       "image": "two"}}
    assert deployments.traffic_patch(spec, TrafficSplit("2", "1", 10)) == {
        "version": "2", "image": "two", "canary": {"version": "1", "weight": 10, "image": "one"}}
    assert deployments.traffic_patch(spec, TrafficSplit("1", "3", 10)) == {
        "version": "1", "image": "one", "canary": {"version": "3", "weight": 10, "image": None}}
