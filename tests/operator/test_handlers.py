"""The handlers called directly, against kmock's Kubernetes emulator."""

from __future__ import annotations

import copy
from typing import Any

import kmock
import kopf
import pytest

from tests.operator import examples
from uplion.operator import decide, events, handlers, kube

NS = examples.NAMESPACE


async def reconciled(client: kube.Kube, aimodel: dict[str, Any]) -> dict[str, Any]:
    """Run the reconcile handler; the status it asks kopf to write."""
    patch = kopf.Patch()
    await handlers.reconcile(body=kopf.Body(aimodel), patch=patch, memo={"kube": client})
    status: dict[str, Any] = dict(patch["status"])
    await client.patch_aimodel_status(NS, aimodel["metadata"]["name"], status)
    return status


def writes(server: kmock.KubernetesEmulator) -> int:
    return len(server["post"]) + len(server["patch"]) + len(server["put"])


async def test_reconcile_applies_owned_objects_once(
    client: kube.Kube, kmock: kmock.KubernetesEmulator
) -> None:
    aimodel = await client.create(copy.deepcopy(examples.LOCAL))
    status = await reconciled(client, aimodel)

    assert status["phase"] == "Pending"
    assert status["message"] == "scaled to zero"
    assert status["observedGeneration"] == 1
    for kind, name in [("ConfigMap", "smollm2-models"), ("Deployment", "smollm2-worker"),
                       ("ScaledObject", "smollm2-worker")]:
        api_version = {"ConfigMap": "v1", "Deployment": "apps/v1"}.get(kind, "keda.sh/v1alpha1")
        owned = await client.get(api_version, kind, NS, name)
        assert owned["metadata"]["ownerReferences"][0]["uid"] == "uid-smollm2"

    before = writes(kmock)
    again = await reconciled(client, await client.get_aimodel(NS, "smollm2"))
    assert again == status
    assert writes(kmock) == before + 1  # the status write of this test; no object changed


async def test_update_leaves_the_live_replica_count_to_keda(client: kube.Kube) -> None:
    aimodel = await client.create(copy.deepcopy(examples.LOCAL))
    await reconciled(client, aimodel)
    await client.patch("apps/v1", "Deployment", NS, "smollm2-worker", {"spec": {"replicas": 3}})

    changed = await client.patch_aimodel(
        NS, "smollm2", {"metadata": {"generation": 2}, "spec": {"concurrency": 8}})
    status = await reconciled(client, changed)

    deployment = await client.get("apps/v1", "Deployment", NS, "smollm2-worker")
    assert deployment["spec"]["replicas"] == 3
    config_map = await client.get("v1", "ConfigMap", NS, "smollm2-models")
    assert "concurrency: 8" in config_map["data"]["models.yaml"]
    assert status["observedGeneration"] == 2


async def test_invalid_spec_fails_permanently(client: kube.Kube) -> None:
    aimodel = copy.deepcopy(examples.LOCAL)
    aimodel["spec"]["replicas"] = {"min": 5, "max": 1}
    patch = kopf.Patch()
    with pytest.raises(kopf.PermanentError, match="invalid spec"):
        await handlers.reconcile(body=kopf.Body(aimodel), patch=patch, memo={"kube": client})
    assert patch["status"]["phase"] == "Failed"
    assert patch["status"]["reason"] == "InvalidSpec"


async def test_worker_event_fails_the_model_until_a_new_generation_is_available(
    client: kube.Kube, kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    aimodel = await client.create(copy.deepcopy(examples.LOCAL))
    await reconciled(client, aimodel)
    monkeypatch.setenv("POD_NAME", "smollm2-worker-5d9c7-x2bq4")
    monkeypatch.setenv("POD_NAMESPACE", NS)
    assert await events.report_unrecoverable("EngineLoadFailed", "no such model", client=client)
    event = (await client.list_events(NS, decide.UNRECOVERABLE))[0]

    await handlers.worker_failed(body=kopf.Body(event), type="ADDED", memo={"kube": client})
    status = (await client.get_aimodel(NS, "smollm2"))["status"]
    assert (status["phase"], status["reason"], status["message"]) == (
        "Failed", "EngineLoadFailed", "no such model")

    # Available pods of the same generation do not hide the failure.
    deployment = await client.patch("apps/v1", "Deployment", NS, "smollm2-worker",
                                    {"status": {"availableReplicas": 1}}, subresource="status")
    await handlers.deployment_changed(body=kopf.Body(deployment), type="MODIFIED",
                                      memo={"kube": client})
    assert (await client.get_aimodel(NS, "smollm2"))["status"]["phase"] == "Failed"

    fixed = await client.patch_aimodel(
        NS, "smollm2", {"metadata": {"generation": 2}, "spec": {"engine": {"options": {}}}})
    status = await reconciled(client, fixed)
    assert status["phase"] == "Running"
    assert status["replicas"] == 1


async def test_events_of_other_pods_are_ignored(client: kube.Kube) -> None:
    aimodel = await client.create(copy.deepcopy(examples.LOCAL))
    await reconciled(client, aimodel)
    event = events.unrecoverable_event("smollm2-worker-extra-abc-def", NS, "X", "other")
    await client.create_event(event)
    await handlers.worker_failed(body=kopf.Body(event), type="ADDED", memo={"kube": client})
    assert (await client.get_aimodel(NS, "smollm2"))["status"]["phase"] == "Pending"


async def test_report_is_a_no_op_outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    assert await events.report_unrecoverable("EngineLoadFailed", "boom") is False


async def test_reconcile_passes_the_operators_tracing_settings_to_the_workers(
    client: kube.Kube,
) -> None:
    aimodel = await client.create(copy.deepcopy(examples.LOCAL))
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
               "OTEL_SERVICE_NAME": "uplion-operator"}
    await handlers.reconcile(body=kopf.Body(aimodel), patch=kopf.Patch(),
                             memo={"kube": client, "environ": environ})
    deployment = await client.get("apps/v1", "Deployment", NS, "smollm2-worker")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4318"} in env
    assert "OTEL_SERVICE_NAME" not in {e["name"] for e in env}
