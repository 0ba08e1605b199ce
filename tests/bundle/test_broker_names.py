"""Every component names the same Pulsar tenant, namespace and URLs, derived from one place.

The inventory's ``uplion_pulsar`` feeds the ``pulsar`` role (which creates the tenant and one
namespace per environment) and the ``uplion_gitops`` role (which writes each environment's
``UPLION_BROKER_URL`` and ``UPLION_WORKER_BROKER_URL``). The gateway reads its URL from that
Secret; the workers of the models under argocd/models/ read theirs from the same Secret key
(``urlSecretRef``); KEDA's ``pulsar`` scaler gets the admin URL, tenant and namespace the AIModel
names. Here each example inventory is rendered through both roles, each Application through
``helm template`` and the operator's manifests, and every string compared.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import conftest
from tests.bundle.test_addons import VAULT, objects, render
from uplion import protocol
from uplion.broker import pulsar_names
from uplion.operator import deployments, manifests

ENVIRONMENTS = ("test", "staging", "production")
INVENTORIES = ("aws", "openstack", "baremetal")
ARGOCD = conftest.ROOT / "argocd"


def inventory_pulsar(inventory: str) -> dict[str, Any]:
    path = conftest.ROOT / "inventories" / inventory / "group_vars" / "all" / "main.yml"
    found: dict[str, Any] = yaml.safe_load(path.read_text())["uplion_pulsar"]
    return found


@pytest.fixture(scope="module", params=INVENTORIES)
def roles_out(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[dict[str, Any], Path]:
    pulsar = inventory_pulsar(request.param)
    tmp = tmp_path_factory.mktemp(f"broker-{request.param}")
    done = render(tmp, ["pulsar", "uplion_gitops"], {**VAULT, "uplion_pulsar": pulsar})
    assert done.returncode == 0, done.stdout[-4000:]
    return pulsar, tmp / "out"


def secret_urls(out: Path) -> dict[str, dict[str, str]]:
    """Per environment, the Secret uplion-platform's data."""
    return {s["metadata"]["namespace"].removeprefix("uplion-"): s["stringData"]
            for s in objects(out, "uplion_gitops", "secrets.yml")
            if s["metadata"]["name"] == "uplion-platform"}


def helm_template(helm: Path, env: dict[str, str], chart: str, values: dict[str, Any],
                  release: str, namespace: str, tmp: Path) -> list[dict[str, Any]]:
    values_file = tmp / f"{chart}-{release}-{namespace}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [str(helm), "template", release, str(conftest.CHARTS / chart), "-n", namespace,
         "-f", str(values_file), "--skip-crds"],
        capture_output=True, text=True, env=env, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    return conftest.documents(done.stdout)


def application(path: Path) -> tuple[dict[str, Any], str]:
    app = yaml.safe_load(path.read_text())
    return app["spec"]["source"]["helm"]["valuesObject"], app["spec"]["destination"]["namespace"]


def test_the_pulsar_role_creates_what_the_secrets_name(
    roles_out: tuple[dict[str, Any], Path]
) -> None:
    pulsar, out = roles_out
    tenancy = yaml.safe_load((out / "pulsar" / "tenancy.yml").read_text())
    release = yaml.safe_load((out / "pulsar" / "release-pulsar.yml").read_text())
    broker_host = f"{release['name']}-broker.{release['namespace']}.svc.cluster.local"
    assert tenancy["allowed_clusters"] == [release["name"]]
    for env, data in secret_urls(out).items():
        for key in ("UPLION_BROKER_URL", "UPLION_WORKER_BROKER_URL"):
            settings = pulsar_names.parse_url(data[key])
            assert settings.tenant == tenancy["tenant"]
            assert f"{settings.tenant}/{settings.namespace}" in tenancy["namespaces"]
            assert settings.namespace == env
            assert settings.hosts == ((broker_host, 6650),)
            assert settings.admin_url == f"http://{broker_host}:8080" == pulsar["admin_url"]
    assert set(secret_urls(out)) == set(ENVIRONMENTS)


def test_gateways_workers_and_keda_agree(
    roles_out: tuple[dict[str, Any], Path], helm: Path, helm_env: dict[str, str],
    tmp_path: Path,
) -> None:
    _, out = roles_out
    secrets = secret_urls(out)
    models = sorted(ARGOCD.glob("models/*/*.yaml"))
    assert {path.stem for path in models} == set(ENVIRONMENTS)
    for path in models:
        values, namespace = application(path)
        env = namespace.removeprefix("uplion-")
        expected = pulsar_names.parse_url(secrets[env]["UPLION_BROKER_URL"])
        platform_values, platform_namespace = application(
            ARGOCD / "platform" / f"uplion-{env}.yaml")
        assert platform_namespace == namespace
        platform = helm_template(helm, helm_env, "uplion", platform_values, "uplion", namespace,
                                 tmp_path)
        gateway = next(o for o in platform if o["kind"] == "Deployment"
                       and o["metadata"]["name"].endswith("gateway"))
        container = gateway["spec"]["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": "uplion-platform"}} in container["envFrom"]
        workers_secret = next(e["value"] for e in container["env"]
                              if e["name"] == "UPLION_WORKERS_BROKER_SECRET")
        assert workers_secret == "uplion-platform/UPLION_WORKER_BROKER_URL"
        gateway_broker = deployments.workers_broker(secrets[env]["UPLION_BROKER_URL"],
                                                    workers_secret)

        rendered = helm_template(helm, helm_env, "uplion-model", values,
                                 values["spec"]["name"], namespace, tmp_path)
        aimodel = next(o for o in rendered if o["kind"] == "AIModel")
        broker = aimodel["spec"]["broker"]
        # The AIModels the gateway creates and the ones in git name the same broker.
        assert gateway_broker.url_secret_ref is not None
        assert broker["urlSecretRef"] == gateway_broker.url_secret_ref.model_dump()
        assert (broker["kind"], broker["adminUrl"], broker["tenant"], broker["namespace"]) == (
            gateway_broker.kind, gateway_broker.admin_url, gateway_broker.tenant,
            gateway_broker.namespace), path

        aimodel["metadata"].update(namespace=namespace, uid="uid")
        owned = manifests.all_objects(aimodel, namespace)
        worker = next(o for o in owned if o["kind"] == "Deployment")
        container = worker["spec"]["template"]["spec"]["containers"][0]
        ref = next(e for e in container["env"] if e["name"] == "UPLION_BROKER_URL")[
            "valueFrom"]["secretKeyRef"]
        assert ref == {"name": "uplion-platform", "key": "UPLION_WORKER_BROKER_URL"}
        workers = pulsar_names.parse_url(secrets[env][ref["key"]])
        scaler = next(o for o in owned if o["kind"] == "ScaledObject")["spec"]["triggers"][0]
        topic = protocol.topic_for(aimodel["spec"]["name"], aimodel["spec"]["version"])
        for settings in (workers, expected):
            assert settings.topic(topic) == scaler["metadata"]["topic"], path
            assert settings.admin_url == scaler["metadata"]["adminURL"], path


def test_the_docs_name_the_inventorys_settings() -> None:
    """docs/deploy.md shows uplion_pulsar as the example inventories set it, and no other
    Pulsar URL."""
    text = (conftest.ROOT / "docs" / "deploy.md").read_text()
    block = text[text.index("uplion_pulsar:"):]
    block = block[:block.index("```")]
    assert yaml.safe_load(block)["uplion_pulsar"] == inventory_pulsar("aws")
    assert all(inventory_pulsar(name) == inventory_pulsar("aws") for name in INVENTORIES)
