"""The operator from the image, as the chart runs it (read-only root, non-root, no capabilities),
against kmock's Kubernetes API stand-in on the host: it turns an AIModel into its workers'
Deployment. The cluster's service account is stood in for by a kubeconfig naming the stand-in."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kmock import ResourceInfo

from tests.containers import pods
from tests.containers.conftest import pod_spec
from tests.operator import examples
from tests.operator.kmock_api import declare
from uplion.operator import kube

TIMEOUT_S = 120


@pytest.fixture
def kubeconfig(kmock: kmock.KubernetesEmulator, tmp_path: Path) -> Path:
    """A kubeconfig naming the stand-in as the containers reach it, in a folder they can read."""
    url = str(kmock.url).rstrip("/").replace("127.0.0.1", pods.HOST)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
        "users": [{"name": "operator", "user": {"token": "stand-in"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "operator"}}],
    }))
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    return path


async def test_the_operator_makes_an_aimodels_workers(
    kmock: kmock.KubernetesEmulator, uplion_image: str, release: list[dict[str, Any]],
    objects: pods.Objects, kubeconfig: Path,
) -> None:
    declare(kmock)
    for key, kind in [("apiextensions.k8s.io/v1/customresourcedefinitions",
                       "CustomResourceDefinition"), ("v1/namespaces", "Namespace")]:
        kmock.resources[key] = ResourceInfo(kind=kind, namespaced=False,
                                            verbs={"get", "list", "watch"})
    url = str(kmock.url).rstrip("/")
    aimodel = copy.deepcopy(examples.LOCAL)
    aimodel["metadata"]["namespace"] = pods.NAMESPACE
    client = await kube.Kube.connect(host=url)
    container = await asyncio.to_thread(
        pods.run, uplion_image, pod_spec(release, "Deployment", "operator"), "operator",
        objects, kubeconfig.parent,
        env={"KUBECONFIG": "/etc/stand-in/kubeconfig", "UPLION_OPERATOR_NAMESPACE": ""},
        extra=("--volume", f"{kubeconfig}:/etc/stand-in/kubeconfig:ro"))
    try:
        await client.create(aimodel)
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while True:
            try:
                deployment = await client.get("apps/v1", "Deployment", pods.NAMESPACE,
                                              "smollm2-worker")
                break
            except kube.NotFound:
                running = await asyncio.to_thread(container.running)
                if not running or asyncio.get_running_loop().time() > deadline:
                    pytest.fail("no worker Deployment; the operator's log:\n"
                                + await asyncio.to_thread(container.logs))
                await asyncio.sleep(0.2)
        worker = deployment["spec"]["template"]["spec"]["containers"][0]
        assert worker["image"] == aimodel["spec"]["image"]
    finally:
        await client.close()
        await asyncio.to_thread(container.remove)
