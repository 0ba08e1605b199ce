"""The objects an AIModel owns: valid Kubernetes and KEDA objects, built the same every time."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.bundle import crd_models
from tests.operator import examples
from uplion.broker import redis_streams
from uplion.operator import manifests

K8S_VERSION = "1.37.0"
NS = examples.NAMESPACE


def _kube_errors(obj: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return str(error).splitlines()[0]
    return None


SCALED_OBJECT_TYPOS: list[tuple[list[Any], str]] = [
    (["spec"], "minReplicas"),
    (["spec", "scaleTargetRef"], "nmae"),
    (["spec", "triggers", 0], "authRef"),
]


def _with_typo(obj: dict[str, Any], path: list[Any], typo: str) -> dict[str, Any]:
    target = obj
    for key in path:
        target = target[key]
    target[typo] = 1
    return obj


@pytest.fixture(scope="module")
def keda_errors() -> dict[str, list[str]]:
    """What the models generated from KEDA's CRD say of every example's ScaledObjects and of the
    misspelt ones below, by ``<example>/<name>`` (one node and tsc run for all: they are slow)."""
    objects = {
        f"{name}/{obj['metadata']['name']}": obj
        for name in sorted(examples.ALL)
        for obj in manifests.all_objects(examples.example(name), NS)
        if obj["kind"] == "ScaledObject"
    }
    objects |= {
        f"typo/{typo}": _with_typo(manifests.scaled_object(examples.example("local"), NS),
                                   path, typo)
        for path, typo in SCALED_OBJECT_TYPOS
    }
    return dict(zip(objects, crd_models.validate(list(objects.values())), strict=True))


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize("name", sorted(examples.ALL))
def test_every_object_validates(name: str, keda_errors: dict[str, list[str]]) -> None:
    objects = manifests.all_objects(examples.example(name), NS)
    kinds = [o["kind"] for o in objects]
    tracks = 2 if name == "gpu-canary" else 1
    assert kinds == ["ConfigMap"] + ["Deployment", "ScaledObject"] * tracks
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            assert keda_errors[f"{name}/{obj['metadata']['name']}"] == []
        else:
            assert _kube_errors(obj) is None


@pytest.mark.parametrize(("build", "path", "typo"), [
    (manifests.worker_deployment, ["spec"], "replica"),
    (manifests.worker_deployment, ["spec", "template", "spec"], "nodeSelecter"),
    (manifests.worker_config_map, [], "datas"),
])
def test_a_typo_in_a_kubernetes_object_fails(
    build: Any, path: list[str], typo: str
) -> None:
    obj = build(examples.example("local"), NS)
    target = obj
    for key in path:
        target = target[key]
    target[typo] = 1
    assert _kube_errors(obj) is not None


def test_a_typo_in_a_container_security_context_fails() -> None:
    deployment = manifests.worker_deployment(examples.example("local"), NS)
    _container(deployment)["securityContext"]["runAsNonroot"] = True
    assert _kube_errors(deployment) is not None


@pytest.mark.parametrize(("path", "typo"), SCALED_OBJECT_TYPOS)
def test_a_typo_in_a_scaled_object_fails(
    path: list[Any], typo: str, keda_errors: dict[str, list[str]]
) -> None:
    errors = keda_errors[f"typo/{typo}"]
    assert any(typo in error for error in errors), errors


def test_building_twice_gives_the_same_objects_and_leaves_the_input_alone() -> None:
    aimodel = examples.example("gpu-canary")
    before = copy.deepcopy(aimodel)
    first = manifests.all_objects(aimodel, NS)
    _container(first[1])["securityContext"]["privileged"] = True
    assert manifests.all_objects(aimodel, NS) != first
    assert manifests.all_objects(aimodel, NS) == manifests.all_objects(aimodel, NS)
    assert aimodel == before


def test_every_object_is_owned_by_the_aimodel() -> None:
    aimodel = examples.example("gpu-canary")
    for obj in manifests.all_objects(aimodel, NS):
        assert obj["metadata"]["namespace"] == NS
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "uplion.ai/v1alpha1", "kind": "AIModel", "name": "llama",
            "uid": "uid-llama", "controller": True, "blockOwnerDeletion": True,
        }]


def test_gpu_count_becomes_nvidia_gpu_limits_and_scheduling() -> None:
    deployment = manifests.worker_deployment(examples.example("gpu-canary"), NS)
    assert _container(deployment)["resources"] == {
        "limits": {"memory": "24Gi", "nvidia.com/gpu": 2}
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    local = manifests.worker_deployment(examples.example("local"), NS)
    assert "nvidia.com/gpu" not in _container(local)["resources"]["limits"]
    assert "nodeSelector" not in local["spec"]["template"]["spec"]


def test_worker_container_is_locked_down() -> None:
    deployment = manifests.worker_deployment(examples.example("local"), NS)
    container = _container(deployment)
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == manifests.WORKER_SERVICE_ACCOUNT  # events only (chart RBAC)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/uplion": "models", "/tmp": "tmp", "/var/cache/uplion": "cache"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"]["emptyDir"] == volumes["cache"]["emptyDir"] == {}
    assert volumes["models"]["configMap"]["name"] == "smollm2-models"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "health"


def test_worker_command_and_environment() -> None:
    deployment = manifests.worker_deployment(examples.example("upstream"), NS)
    container = _container(deployment)
    assert container["command"] == ["uplion"]
    assert container["args"][:3] == ["worker", "--model", "gpt-4o-mini@2024-07-18"]
    env = {e["name"]: e for e in container["env"]}
    assert env["UPLION_BROKER_URL"]["value"] == (  # the AIModel's Pulsar settings, for the broker
        "pulsar://pulsar-broker.pulsar:6650"
        "?admin=http://pulsar-broker.pulsar:8080&namespace=default&tenant=public"
    )
    assert env["UPLION_API_KEY_TEAM_B"]["valueFrom"] == {
        "secretKeyRef": {"name": "openai-keys", "key": "team-b"}
    }


def test_a_changed_models_file_rolls_the_workers() -> None:
    aimodel = examples.example("local")
    before = manifests.worker_deployment(aimodel, NS)["spec"]["template"]["metadata"]
    aimodel["spec"]["concurrency"] = 3
    after = manifests.worker_deployment(aimodel, NS)["spec"]["template"]["metadata"]
    assert before["annotations"] != after["annotations"]


def test_canary_track_serves_the_canary_version() -> None:
    aimodel = examples.example("gpu-canary")
    deployment = manifests.worker_deployment(aimodel, NS, "canary")
    assert deployment["metadata"]["name"] == "llama-canary-worker"
    assert _container(deployment)["image"] == "ghcr.io/uplion/uplion:0.2.0-cuda"
    assert _container(deployment)["args"][2] == "llama-3-8b@2"
    stable = manifests.worker_deployment(aimodel, NS)
    assert stable["spec"]["selector"] != deployment["spec"]["selector"]
    trigger = manifests.scaled_object(aimodel, NS, "canary")["spec"]["triggers"][0]
    assert trigger["metadata"]["stream"] == "uplion:topic:model.llama-3-8b@2"
    with pytest.raises(ValueError, match="no canary"):
        manifests.worker_deployment(examples.example("local"), NS, "canary")


def test_redis_scales_on_pending_entries_and_lag() -> None:
    obj = manifests.scaled_object(examples.example("local"), NS)
    spec = obj["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "smollm2-worker"
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (
        0, 4, 120
    )
    common = {
        "address": "redis.uplion:6379",
        "stream": "uplion:topic:model.smollm2-135m-instruct@1",
        "consumerGroup": "workers",
        "databaseIndex": "2",
    }
    assert spec["triggers"] == [
        {"type": "redis-streams", "name": "pending",
         "metadata": {**common, "pendingEntriesCount": "4"}},
        {"type": "redis-streams", "name": "lag",
         "metadata": {**common, "lagCount": "4", "activationLagCount": "0"}},
    ]


def test_redis_over_tls() -> None:
    obj = manifests.scaled_object(examples.example("gpu-canary"), NS)
    for trigger in obj["spec"]["triggers"]:
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["metadata"]["address"] == "redis.uplion:6380"
        assert "secret" not in str(trigger)


def test_redis_stream_key_matches_the_broker() -> None:
    assert manifests.REDIS_STREAM_PREFIX == redis_streams._TOPIC_PREFIX


def test_a_redis_url_without_a_host_is_refused() -> None:
    aimodel = examples.example("local")
    aimodel["spec"]["broker"]["url"] = "unix:///run/redis.sock"
    with pytest.raises(ValueError, match="redis://"):
        manifests.scaled_object(aimodel, NS)


def test_pulsar_scales_on_the_subscription_backlog() -> None:
    spec = manifests.scaled_object(examples.example("upstream"), NS)["spec"]
    assert spec["triggers"] == [{
        "type": "pulsar",
        "name": "backlog",
        "metadata": {
            "adminURL": "http://pulsar-broker.pulsar:8080",
            "topic": "persistent://public/default/model.gpt-4o-mini_v2024-07-18",
            "subscription": "workers",
            "msgBacklogThreshold": "8",
            "activationMsgBacklogThreshold": "0",
        },
        "authenticationRef": {"name": "pulsar-auth"},
    }]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 1)


def test_long_names_are_cut_to_a_dns_label() -> None:
    aimodel = examples.example("gpu-canary")
    aimodel["metadata"]["name"] = "m" * 100
    names = {manifests.workload_name(aimodel, t) for t in ("stable", "canary")}
    assert len(names) == 2
    assert all(len(n) <= 63 for n in names)
    deployment = manifests.worker_deployment(aimodel, NS)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(len(value) <= 63 for value in labels.values())


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_a_sourced_model_is_fetched_by_an_init_container_the_worker_reads() -> None:
    deployment = manifests.worker_deployment(examples.example("s3-source"), NS)
    pod = _pod(deployment)
    [fetch] = pod["initContainers"]
    worker = pod["containers"][0]
    link = manifests.model_link("churn-classifier", "3")
    assert fetch["command"] == ["uplion"]
    assert fetch["args"] == ["fetch-model", "--models-file", "/etc/uplion/models.yaml",
                             "--model", "churn-classifier@3", "--link", link]
    assert fetch["image"] == worker["image"]
    # The same credentials and locked-down container as the worker.
    assert fetch["envFrom"] == worker["envFrom"] == [{"secretRef": {"name": "churn-model-s3"}}]
    assert fetch["securityContext"] == worker["securityContext"]
    assert fetch["volumeMounts"] == worker["volumeMounts"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["UPLION_MODEL_PATH"] == link
    assert env["UPLION_MODEL_CACHE"] == manifests.MODEL_CACHE_DIR
    assert link.startswith(manifests.MODEL_CACHE_DIR + "/")
    assert "UPLION_MODEL_PATH" not in {e["name"] for e in fetch["env"]}
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["hostPath"] == {"path": "/var/cache/uplion", "type": "DirectoryOrCreate"}


def test_a_model_without_a_source_has_no_init_container() -> None:
    pod = _pod(manifests.worker_deployment(examples.example("upstream"), NS))
    assert "initContainers" not in pod
    assert "UPLION_MODEL_PATH" not in {e["name"] for e in pod["containers"][0]["env"]}


def test_a_volume_source_mounts_its_claim_read_only() -> None:
    pod = _pod(manifests.worker_deployment(examples.example("pvc-source"), NS))
    source = next(v for v in pod["volumes"] if v["name"] == "source")
    assert source["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "source")
    assert mount == {"name": "source", "mountPath": f"{manifests.PVC_ROOT}/model-store",
                     "readOnly": True}
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"] == {"sizeLimit": "20Gi"}


def test_the_models_file_carries_the_source_to_the_fetch() -> None:
    models = yaml.safe_load(manifests.models_file(examples.example("s3-source")))["models"]
    assert models[0]["source"] == "s3://models/churn/v3"
    assert models[0]["fetch"]["s3"] == {"endpoint_url": "http://minio.storage:9000",
                                        "region": None, "path_style": True, "ca_bundle": None}
    assert models[0]["fetch"]["sha256"] == {"model.onnx": "ab" * 32}


OPERATOR_TRACING = {
    "OTEL_SERVICE_NAME": "uplion-operator",
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer secret",
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.1",
    "OTEL_BSP_SCHEDULE_DELAY": "500",
    "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=uplion-system,deployment.environment=prod",
    "UPLION_METRICS_PORT": "9090",
}


def test_workers_inherit_the_operators_tracing_settings() -> None:
    """The worker container traces where the operator's chart said to, as `uplion-worker` (its
    own default name) in its own namespace; no secret header becomes a plain value."""
    deployment = manifests.worker_deployment(examples.example("s3-source"), NS,
                                             environ=OPERATOR_TRACING)
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert {name: value for name, value in env.items() if name.startswith("OTEL_")} == {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        "OTEL_RESOURCE_ATTRIBUTES": f"k8s.namespace.name={NS},deployment.environment=prod",
    }
    assert "UPLION_METRICS_PORT" not in env
    assert not any(e["name"].startswith("OTEL_") for e in pod["initContainers"][0]["env"])
    assert _kube_errors(deployment) is None


def test_without_tracing_settings_the_workers_get_none() -> None:
    for environ in (None, {}, {"UPLION_METRICS_PORT": "9090", "PATH": "/usr/bin"}):
        deployment = manifests.worker_deployment(examples.example("local"), NS, environ=environ)
        assert not any(e["name"].startswith("OTEL_") for e in _container(deployment)["env"])
