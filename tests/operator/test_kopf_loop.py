"""The real kopf loop, in-process, against kmock's Kubernetes emulator (cluster-wide)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kmock
import kopf
import pytest

from tests.operator import examples
from tests.operator.kmock_api import declare
from uplion.operator import events, handlers, kube, run

NS = examples.NAMESPACE


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110  # the state lives in the API server
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_operator(server: kmock.KubernetesEmulator) -> AsyncIterator[kube.Kube]:
    """kopf's loop against the emulator. Not a fixture: at its stop kopf cancels the tasks
    started after it, a fixture's finalizer among them."""
    declare(server)
    for key, kind in [("apiextensions.k8s.io/v1/customresourcedefinitions",
                       "CustomResourceDefinition"), ("v1/namespaces", "Namespace")]:
        server.resources[key] = kmock.ResourceInfo(
            kind=kind, namespaced=False, verbs={"get", "list", "watch"})
    url = str(server.url).rstrip("/")
    client = await kube.Kube.connect(host=url)
    registry = handlers.build_registry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run.operate(
        None, registry=registry, memo=kopf.Memo(kube=client), stop_flag=stop, ready_flag=ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield client
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)  # the cleanup handler closes the client


async def phase(client: kube.Kube) -> str | None:
    status = (await client.get_aimodel(NS, "smollm2")).get("status") or {}
    return status.get("phase")


async def test_lifecycle(kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_operator(kmock) as client:
        await lifecycle(client, monkeypatch)


async def lifecycle(client: kube.Kube, monkeypatch: pytest.MonkeyPatch) -> None:
    await client.create(copy.deepcopy(examples.LOCAL))

    async def owned() -> bool:
        try:
            found = [await client.get("v1", "ConfigMap", NS, "smollm2-models"),
                     await client.get("apps/v1", "Deployment", NS, "smollm2-worker"),
                     await client.get("keda.sh/v1alpha1", "ScaledObject", NS, "smollm2-worker")]
        except kube.NotFound:
            return False
        return all(o["metadata"]["ownerReferences"][0]["name"] == "smollm2" for o in found)

    await eventually(owned)
    await eventually(lambda: _is(client, "Pending"))

    monkeypatch.setenv("POD_NAME", "smollm2-worker-5d9c7-x2bq4")
    monkeypatch.setenv("POD_NAMESPACE", NS)
    assert await events.report_unrecoverable("EngineLoadFailed", "no such model", client=client)
    await eventually(lambda: _is(client, "Failed"))

    await client.patch_aimodel(
        NS, "smollm2", {"metadata": {"generation": 2}, "spec": {"concurrency": 3}})
    await client.patch("apps/v1", "Deployment", NS, "smollm2-worker",
                       {"status": {"availableReplicas": 1}}, subresource="status")
    await eventually(lambda: _is(client, "Running"))


async def _is(client: kube.Kube, expected: str) -> bool:
    return await phase(client) == expected
