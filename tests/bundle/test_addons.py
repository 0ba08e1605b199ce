"""The add-on roles: argument specs, ansible-lint, and what each role would apply, rendered and
validated offline.

Each role's ``render`` entry point writes its Helm releases (repository, chart, pinned version,
values) and the Kubernetes objects it applies. Values are checked against the real charts'
default values in test_chart_values.py. Namespaces and Secrets go through kubernetes-validate,
AppProject and Application through the Argo CD models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import conftest, crd_models

ROLES = ("metrics_server", "gpu_operator", "keda", "istio", "cert_manager", "monitoring", "pulsar",
         "argocd", "argo_workflows", "uplion_gitops")
ADDONS = ROLES[:-1]
ROLES_DIR = conftest.ROOT / "roles"
PLAYBOOK = Path(__file__).parent / "render-roles.yml"
VAULT = {
    "vault_uplion_git_username": "deploy",
    "vault_uplion_git_token": "token-not-a-secret",
    "vault_uplion_platform_secrets": {
        env: {
            "redis_url": f"redis://redis.{env}:6379/0",
            "database_url": f"postgresql+asyncpg://uplion:pw@db.{env}/uplion",
        }
        for env in ("test", "staging", "production")
    },
    "vault_uplion_rollout_tokens": {
        env: {"api_token": f"up-{env}", "admin_token": f"adm-{env}"}
        for env in ("test", "staging", "production")
    },
}
# The inventory's uplion_pulsar (inventories/*/group_vars/all/main.yml).
PULSAR = {
    "url": "pulsar://pulsar-broker.pulsar.svc.cluster.local:6650",
    "admin_url": "http://pulsar-broker.pulsar.svc.cluster.local:8080",
    "tenant": "uplion",
    "namespaces": ["test", "staging", "production"],
}
INVENTORY = {"uplion_pulsar": PULSAR}
Validate = Callable[[dict[str, Any]], None]


def render(tmp: Path, roles: list[str], extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    variables = tmp / "vars.json"
    variables.write_text(
        json.dumps({"render_root": str(tmp / "out"), "render_roles": roles, **extra})
    )
    env = {
        "ANSIBLE_ROLES_PATH": str(ROLES_DIR),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(tmp),
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            f"@{variables}",
            str(PLAYBOOK),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("roles")
    done = render(tmp, list(ROLES), {**VAULT, **INVENTORY})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return tmp / "out"


def releases(out: Path, role: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted((out / role).glob("release-*.yml"))]


def objects(out: Path, role: str, name: str = "objects.yml") -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = yaml.safe_load((out / role / name).read_text()) or []
    return loaded


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_cover_every_default(role: str) -> None:
    defaults = yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"
    ]
    assert all(name.startswith(f"{role}_") for name in defaults)
    assert set(specs["main"]["options"]) == set(defaults)
    assert set(specs["render"]["options"]) == set(defaults) | {f"{role}_render_dir"}
    readme = (ROLES_DIR / role / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in defaults), (
        "every variable is documented in the README"
    )


def test_ansible_lint_production_profile() -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-lint"),
            "--offline",
            "--profile",
            "production",
            *(f"roles/{role}" for role in ROLES),
        ],
        capture_output=True,
        text=True,
        cwd=conftest.ROOT,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_role_settings_reach_the_values(tmp_path: Path) -> None:
    done = render(
        tmp_path,
        ["gpu_operator", "pulsar"],
        {
            "gpu_operator_driver_enabled": False,
            "gpu_operator_toolkit_enabled": False,
            "pulsar_broker_replicas": 3,
            "pulsar_ensemble_size": 2,
            **INVENTORY,
        },
    )
    assert done.returncode == 0, done.stdout[-4000:]
    gpu = releases(tmp_path / "out", "gpu_operator")[0]["values"]
    assert gpu["driver"] == {"enabled": False}
    assert gpu["toolkit"]["enabled"] is False
    pulsar = releases(tmp_path / "out", "pulsar")[0]["values"]
    assert pulsar["broker"]["replicaCount"] == 3
    assert pulsar["broker"]["configData"]["managedLedgerDefaultEnsembleSize"] == "2"


def test_a_wrong_argument_type_is_refused(tmp_path: Path) -> None:
    done = render(tmp_path, ["keda"], {"keda_operator_replicas": "several"})
    assert done.returncode != 0
    assert "keda_operator_replicas" in done.stdout


def test_namespaces_and_secrets_are_valid(rendered: Path, validate_object: Validate) -> None:
    found = [obj for role in ROLES for obj in objects(rendered, role) if obj["kind"] == "Namespace"]
    found += objects(rendered, "uplion_gitops", "secrets.yml")
    assert {o["metadata"]["name"] for o in found if o["kind"] == "Namespace"} >= {
        "gpu-operator",
        "keda",
        "istio-system",
        "istio-ingress",
        "pulsar",
        "argocd",
        "argo",
        "uplion-test",
        "uplion-staging",
        "uplion-production",
    }
    for obj in found:
        validate_object(obj)
    gpu = next(o for o in objects(rendered, "gpu_operator") if o["kind"] == "Namespace")
    assert gpu["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    ingress = next(
        o for o in objects(rendered, "istio") if o["metadata"]["name"] == "istio-ingress"
    )
    assert ingress["metadata"]["labels"]["istio-injection"] == "enabled"


def test_secrets_come_from_the_vault(rendered: Path) -> None:
    secrets = {
        (s["metadata"]["namespace"], s["metadata"]["name"]): s
        for s in objects(rendered, "uplion_gitops", "secrets.yml")
    }
    repository = secrets[("argocd", "uplion-repository")]
    assert repository["metadata"]["labels"] == {"argocd.argoproj.io/secret-type": "repository"}
    assert repository["stringData"] == {
        "type": "git",
        "url": "https://github.com/uplion/uplion.git",
        "username": "deploy",
        "password": "token-not-a-secret",
    }
    platform = secrets[("uplion-staging", "uplion-platform")]["stringData"]
    assert platform["UPLION_DATABASE_URL"] == "postgresql+asyncpg://uplion:pw@db.staging/uplion"
    tokens = secrets[("argo", "uplion-rollout-tokens")]["stringData"]
    assert tokens["production-admin-token"] == "adm-production"
    assert set(tokens) == {
        f"{env}-{kind}-token"
        for env in ("test", "staging", "production")
        for kind in ("api", "admin")
    }
    tasks = yaml.safe_load((ROLES_DIR / "uplion_gitops" / "tasks" / "main.yml").read_text())
    secret_task = next(t for t in tasks if "uplion_gitops_secret_objects" in t.get("loop", ""))
    assert secret_task["no_log"] is True


@pytest.mark.parametrize(
    ("vault", "message"),
    [
        ({}, "vault_uplion_platform_secrets has no entry for environment test"),
        (
            {"vault_uplion_platform_secrets": {
                env: secrets for env, secrets in VAULT["vault_uplion_platform_secrets"].items()
                if env != "staging"}},
            "vault_uplion_platform_secrets has no entry for environment staging",
        ),
        (
            {"vault_uplion_platform_secrets": {
                **VAULT["vault_uplion_platform_secrets"],
                "production": {"redis_url": "redis://redis.production:6379/0"}}},
            "vault_uplion_platform_secrets.production has no database_url",
        ),
        (
            {**VAULT, "vault_uplion_rollout_tokens": {
                **VAULT["vault_uplion_rollout_tokens"], "staging": {"api_token": "up-staging"}}},
            "vault_uplion_rollout_tokens.staging has no admin_token",
        ),
        (
            {"vault_uplion_platform_secrets": {
                **VAULT["vault_uplion_platform_secrets"],
                "test": {**VAULT["vault_uplion_platform_secrets"]["test"],
                         "broker_url": "pulsar://elsewhere:6650"}}},
            "vault_uplion_platform_secrets.test.broker_url is not read: the broker URLs come "
            "from uplion_pulsar",
        ),
    ],
    ids=["no-vault", "no-staging", "no-database-url", "half-a-token-pair", "broker-url"],
)
def test_a_missing_vault_entry_stops_the_role_naming_it(
    tmp_path: Path, vault: dict[str, Any], message: str
) -> None:
    """Nothing is skipped in silence: an environment without its Secret would start a platform
    whose pods never get their URLs."""
    done = render(tmp_path, ["uplion_gitops"], {**vault, **INVENTORY})
    assert done.returncode != 0
    assert message in " ".join(done.stdout.split()), done.stdout[-3000:]
    assert not (tmp_path / "out" / "uplion_gitops" / "secrets.yml").exists()


def test_the_mesh_environments_namespaces_get_sidecars(rendered: Path) -> None:
    """An environment whose platform Application turns Istio on (PeerAuthentication STRICT by
    default) runs in a namespace with sidecar injection; the others do not."""
    namespaces = {o["metadata"]["name"]: o["metadata"]["labels"]
                  for o in objects(rendered, "uplion_gitops") if o["kind"] == "Namespace"}
    for env in ("test", "staging", "production"):
        app = yaml.safe_load(
            (conftest.ROOT / "argocd" / "platform" / f"uplion-{env}.yaml").read_text())
        istio = app["spec"]["source"]["helm"]["valuesObject"].get("istio", {})
        peer = istio.get("peerAuthentication", {})
        strict = (istio.get("enabled", False) and peer.get("enabled", True)
                  and peer.get("mode", "STRICT") == "STRICT")
        labels = namespaces[f"uplion-{env}"]
        assert (labels.get("istio-injection") == "enabled") == bool(strict), (env, labels)
    assert "istio-injection" not in namespaces["argo"]


def test_gitops_objects_are_valid_and_match_the_argocd_tree(rendered: Path) -> None:
    argo = [
        o for o in objects(rendered, "uplion_gitops") if o["kind"] in ("AppProject", "Application")
    ]
    assert [o["kind"] for o in argo] == ["AppProject", "Application"]
    assert crd_models.validate(argo) == [[], []]
    project, root = argo
    assert project == yaml.safe_load((conftest.ROOT / "argocd" / "project.yaml").read_text())
    assert root == yaml.safe_load((conftest.ROOT / "argocd" / "root.yaml").read_text())
    assert root["spec"]["source"]["path"] == "argocd"
    assert root["spec"]["source"]["directory"] == {"recurse": True}
