"""helm lint and helm template over every chart's scenarios; every object validated offline."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import conftest, model_schema
from uplion.broker import redis_acl

CHART_NAMES = ("uplion", "uplion-model")
SCENARIOS = [
    pytest.param(chart, values, id=f"{chart}-{values.stem}")
    for chart in CHART_NAMES
    for values in sorted((conftest.CHARTS / chart / "ci").glob("*-values.yaml"))
]
Validate = Callable[[dict[str, Any]], None]


def helm_run(helm: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, env=env,
                          check=False, timeout=60)


def render(helm: Path, env: dict[str, str], chart: str, *args: str) -> list[dict[str, Any]]:
    done = helm_run(helm, env, "template", "rel", str(conftest.CHARTS / chart),
                    "--namespace", "uplion", "--include-crds", *args)
    assert done.returncode == 0, done.stderr
    return conftest.documents(done.stdout)


def test_every_chart_has_scenarios() -> None:
    for chart in CHART_NAMES:
        assert list((conftest.CHARTS / chart / "ci").glob("*-values.yaml")), chart


@pytest.mark.parametrize(("chart", "values"), SCENARIOS)
def test_lint_strict(helm: Path, helm_env: dict[str, str], chart: str, values: Path) -> None:
    done = helm_run(helm, helm_env, "lint", "--strict", str(conftest.CHARTS / chart),
                    "-f", str(values))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("chart", "values"), SCENARIOS)
def test_rendered_objects_are_valid(
    helm: Path, helm_env: dict[str, str], validate_objects: conftest.ValidateObjects, chart: str,
    values: Path,
) -> None:
    objects = render(helm, helm_env, chart, "-f", str(values))
    assert objects
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    validate_objects(objects)


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def test_default_platform_objects(helm: Path, helm_env: dict[str, str]) -> None:
    kinds = _by_kind(render(helm, helm_env, "uplion"))
    assert {"CustomResourceDefinition", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret",
            "Job"} <= kinds.keys()
    assert not {"Gateway", "VirtualService", "AuthorizationPolicy", "PeerAuthentication",
                "ServiceMonitor", "ClusterRole"} & kinds.keys()
    roles = {d["spec"]["template"]["spec"]["containers"][0]["args"][0]
             for d in kinds["Deployment"]}
    assert roles == {"gateway", "operator", "billing"}


def test_pods_are_locked_down(helm: Path, helm_env: dict[str, str]) -> None:
    objects = render(helm, helm_env, "uplion")
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]
    assert len(pods) == 4
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]
    gateway = next(o for o in objects if o["kind"] == "Deployment"
                   and o["metadata"]["name"].endswith("-gateway"))
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["ports"][0]["containerPort"] == 8000


def test_operator_rbac_is_least_privilege(helm: Path, helm_env: dict[str, str]) -> None:
    objects = render(helm, helm_env, "uplion")
    role = next(o for o in objects
                if o["kind"] == "Role" and o["metadata"]["name"].endswith("-operator"))
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    resources = {resource for _, resource, _ in granted}
    assert resources == {"aimodels", "aimodels/status", "deployments", "configmaps",
                         "scaledobjects", "events"}
    assert not any("*" in part for entry in granted for part in entry)
    assert not any(resource == "secrets" for _, resource, _ in granted)
    worker = next(o for o in objects
                  if o["kind"] == "Role" and o["metadata"]["name"].endswith("-worker"))
    assert worker["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    assert "uplion-worker" in accounts  # the name the operator's worker pods use
    cluster = render(helm, helm_env, "uplion", "--set", "operator.rbac.clusterWide=true")
    assert {"ClusterRole", "ClusterRoleBinding"} <= {o["kind"] for o in cluster}


def test_istio_objects(helm: Path, helm_env: dict[str, str]) -> None:
    kinds = _by_kind(render(helm, helm_env, "uplion", "-f",
                            str(conftest.CHARTS / "uplion" / "ci" / "istio-values.yaml")))
    policy = kinds["AuthorizationPolicy"][0]
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"] == {"name": "uplion-ext-authz"}
    assert kinds["PeerAuthentication"][0]["spec"]["mtls"] == {"mode": "STRICT"}
    assert kinds["Gateway"][0]["spec"]["servers"][0]["tls"]["credentialName"] == "uplion-tls"


def test_long_release_names_are_cut(helm: Path, helm_env: dict[str, str]) -> None:
    name = "long-" + "x" * 48  # 53 characters: the longest release name helm accepts
    done = helm_run(helm, helm_env, "template", name, str(conftest.CHARTS / "uplion"))
    assert done.returncode == 0, done.stderr
    names = {o["metadata"]["name"] for o in conftest.documents(done.stdout)}
    assert all(len(n) <= 63 for n in names), names
    assert len({n for n in names if n.endswith("-gateway")}) == 1


@pytest.mark.parametrize(
    ("chart", "setting", "message"),
    [
        ("uplion", "config.logLevel=loud", "logLevel"),
        ("uplion", "gateway.service.type=Ingress", "type"),
        ("uplion", "istio.peerAuthentication.mode=strict", "mode"),
        ("uplion", "migrate.command=drop", "command"),
        ("uplion", "gateway.replicas=3", "replicas"),
        ("uplion", "redisAcl.workerPassword=p@ss/word", "workerPassword"),
        ("uplion-model", "spec.serves=chat", "serves"),
        ("uplion-model", "spec.broker.kind=kafka", "kind"),
        ("uplion-model", "spec.replica.min=0", "replica"),
    ],
)
def test_values_schema_rejects_bad_values(
    helm: Path, helm_env: dict[str, str], chart: str, setting: str, message: str
) -> None:
    done = helm_run(helm, helm_env, "template", "rel", str(conftest.CHARTS / chart),
                    "--set", setting)
    assert done.returncode != 0
    assert message in done.stderr


def test_model_values_schema_matches_the_crd() -> None:
    """uplion-model's values.schema.json is the CRD's spec made strict: no drift."""
    schema = json.loads((conftest.CHARTS / "uplion-model" / "values.schema.json").read_text())
    assert schema == model_schema.values_schema(), "run: python -m tests.bundle.model_schema"


def _first(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(o for o in objects if o["kind"] == kind))


def _rename_key(text: str, old: str, new: str) -> str:
    assert f"{old}:" in text
    return text.replace(f"{old}:", f"{new}:", 1)


@pytest.mark.parametrize(
    ("chart", "values", "kind", "field", "typo"),
    [
        ("uplion", "default-values.yaml", "Deployment", "readOnlyRootFilesystem",
         "readOnlyRootFileSystem"),
        ("uplion", "default-values.yaml", "Service", "targetPort", "tagetPort"),
        ("uplion", "default-values.yaml", "HorizontalPodAutoscaler", "averageUtilization",
         "averageUtilisation"),
        ("uplion", "istio-values.yaml", "VirtualService", "destination", "destinaton"),
        ("uplion", "istio-values.yaml", "AuthorizationPolicy", "provider", "provder"),
        ("uplion", "istio-values.yaml", "PeerAuthentication", "mtls", "mTLS"),
        ("uplion", "istio-values.yaml", "Gateway", "credentialName", "credentialname"),
        ("uplion", "monitoring-values.yaml", "ServiceMonitor", "scrapeTimeout", "scrapeTimout"),
        ("uplion-model", "canary-values.yaml", "AIModel", "weight", "wieght"),
        ("uplion-model", "local-cpu-values.yaml", "AIModel", "targetBacklog", "target_backlog"),
        ("uplion-model", "upstream-values.yaml", "AIModel", "secretRefs", "secretRef"),
    ],
)
def test_a_typo_in_a_rendered_field_fails(
    helm: Path, helm_env: dict[str, str], validate_object: Validate,
    chart: str, values: str, kind: str, field: str, typo: str,
) -> None:
    objects = render(helm, helm_env, chart, "-f", str(conftest.CHARTS / chart / "ci" / values))
    obj = _first(objects, kind)
    validate_object(obj)  # the object as rendered is valid ...
    broken = yaml.safe_load(_rename_key(yaml.safe_dump(obj), field, typo))
    with pytest.raises(conftest.ObjectsInvalid, match=typo):
        validate_object(broken)  # ... and one misspelt field name is caught


def test_gateway_deployment_mode(helm: Path, helm_env: dict[str, str]) -> None:
    plain = render(helm, helm_env, "uplion")
    assert not [o for o in plain if o["kind"] == "Role" and o["metadata"]["name"].endswith(
        "-gateway")]
    objects = render(helm, helm_env, "uplion", "-f",
                     str(conftest.CHARTS / "uplion" / "ci" / "deployments-values.yaml"))
    role = next(o for o in objects
                if o["kind"] == "Role" and o["metadata"]["name"].endswith("-gateway"))
    assert role["rules"] == [{"apiGroups": ["uplion.ai"], "resources": ["aimodels"],
                              "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]
    gateway = next(o for o in objects if o["kind"] == "Deployment"
                   and o["metadata"]["name"].endswith("-gateway"))
    pod = gateway["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == role["metadata"]["name"]
    env = {item["name"]: item for item in pod["containers"][0]["env"]}
    assert env["UPLION_DEPLOYMENTS"]["value"] == "kubernetes"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def _secret_data(objects: list[dict[str, Any]], suffix: str) -> dict[str, str]:
    secret = next(o for o in objects if o["kind"] == "Secret"
                  and o["metadata"]["name"].endswith(suffix))
    data: dict[str, str] = secret["stringData"]
    return data


def test_cluster_gateway_names_the_workers_broker_by_its_secret(
    helm: Path, helm_env: dict[str, str]
) -> None:
    objects = render(helm, helm_env, "uplion", "-f",
                     str(conftest.CHARTS / "uplion" / "ci" / "deployments-values.yaml"),
                     "--set", "gateway.deployments.brokerAuthenticationRef=uplion-redis-keda")
    gateway = next(o for o in objects if o["kind"] == "Deployment"
                   and o["metadata"]["name"].endswith("-gateway"))
    env = {item["name"]: item for item in gateway["spec"]["template"]["spec"]["containers"][0]
           ["env"]}
    assert env["UPLION_WORKERS_BROKER_SECRET"]["value"] == (
        "rel-uplion-secrets/UPLION_WORKER_BROKER_URL")
    assert env["UPLION_WORKERS_BROKER_AUTH"]["value"] == "uplion-redis-keda"
    plain = _secret_data(render(helm, helm_env, "uplion"), "-secrets")
    assert plain["UPLION_WORKER_BROKER_URL"] == plain["UPLION_BROKER_URL"]


def test_workers_get_a_redis_account_of_their_own(helm: Path, helm_env: dict[str, str]) -> None:
    objects = render(helm, helm_env, "uplion", "-f",
                     str(conftest.CHARTS / "uplion" / "ci" / "redis-acl-values.yaml"))
    secrets = _secret_data(objects, "-secrets")
    assert secrets["UPLION_BROKER_URL"] == "redis://:gateway-pw@redis-master:6379/0"
    assert secrets["UPLION_WORKER_BROKER_URL"] == (
        "redis://uplion-worker:worker-pw@redis-master:6379/0")
    acl = _secret_data(objects, "-redis-acl")
    assert acl["users.acl"] == redis_acl.worker_acl_line("worker-pw") + "\n"


def test_the_charts_acl_rules_are_the_brokers() -> None:
    kept = (conftest.CHARTS / "uplion" / "files" / "redis-worker.acl").read_text()
    assert kept == " ".join(redis_acl.worker_rules()) + "\n", (
        "run: python -m uplion.broker.redis_acl > charts/uplion/files/redis-worker.acl")


def test_a_pulsar_platform_needs_a_redis_for_its_gateways(
    helm: Path, helm_env: dict[str, str]
) -> None:
    done = helm_run(helm, helm_env, "template", "rel", str(conftest.CHARTS / "uplion"),
                    "--set", "secrets.brokerUrl=pulsar://pulsar:6650")
    assert done.returncode != 0
    assert "secrets.redisUrl" in done.stderr


def test_model_chart_names_the_broker_by_its_secret(helm: Path, helm_env: dict[str, str]) -> None:
    for values in sorted((conftest.CHARTS / "uplion-model" / "ci").glob("*-values.yaml")):
        aimodel = _first(render(helm, helm_env, "uplion-model", "-f", str(values)), "AIModel")
        broker = aimodel["spec"]["broker"]
        assert "url" not in broker, values.name
        assert broker["urlSecretRef"]["key"] == "UPLION_WORKER_BROKER_URL"
