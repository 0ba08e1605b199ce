"""A gateway in a cluster routes the model versions its AIModels serve, against kmock."""

from __future__ import annotations

from typing import Any

from uplion import cluster
from uplion.gateway import Catalog
from uplion.models import EngineSpec, ModelSpec
from uplion.operator import kube


def aimodel(name: str, model: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": kube.AIMODEL_API_VERSION, "kind": "AIModel",
        "metadata": {"name": name, "namespace": "models"},
        "spec": {"name": model, "version": "1", "engine": {"kind": "test-echo"},
                 "image": "ghcr.io/uplion/uplion:0.1.0",
                 "broker": {"kind": "redis", "url": "redis://redis:6379/0"}, **spec},
    }




async def test_routes_follow_aimodels(client: kube.Kube) -> None:
    static = ModelSpec(name="from-file", engine=EngineSpec(kind="test-echo"))
    catalog = Catalog([static])
    routes = cluster.AIModelRoutes(client, "models", catalog)

    await client.create(aimodel("chat", "chat", canary={"version": "2", "weight": 10}))
    await client.create(aimodel("clash", "from-file"))
    await routes.sync()
    assert catalog.versions("chat") == ["1", "2"]
    assert catalog.resolve("from-file") is not None
    assert catalog.resolve("from-file").spec == static  # type: ignore[union-attr]

    await client.patch(kube.AIMODEL_API_VERSION, "AIModel", "models", "chat",
                       {"spec": {"concurrency": 7, "canary": None}})
    await routes.sync()
    route = catalog.resolve("chat")
    assert route is not None
    assert route.spec.concurrency == 7
    assert catalog.versions("chat") == ["1"]

    await client.delete_aimodel("models", "chat")
    await routes.sync()
    assert catalog.resolve("chat") is None
    assert catalog.resolve("from-file") is not None


async def test_an_invalid_aimodel_is_skipped(client: kube.Kube) -> None:
    catalog = Catalog([])
    await client.create(aimodel("bad", "bad", concurrency=0))
    await client.create(aimodel("good", "good"))
    await cluster.AIModelRoutes(client, "models", catalog).sync()
    assert catalog.names() == ["good"]
