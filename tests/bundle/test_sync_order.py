"""The order Argo CD applies each rendered release in: every object a Job reads comes first.

The charts are rendered as Argo CD renders them (``helm template``, the Application's release
name, namespace and values) and sorted into Argo CD's phases and waves (``argocd_sync``).
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import argocd_sync, conftest

ARGOCD = conftest.ROOT / "argocd"
UPLION_SCENARIOS = sorted((conftest.CHARTS / "uplion" / "ci").glob("*-values.yaml"))


def helm_applications() -> dict[str, dict[str, Any]]:
    apps = {}
    for path in sorted(ARGOCD.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Application" and "helm" in doc["spec"]["source"]:
                apps[doc["metadata"]["name"]] = doc
    return apps


def render(helm: Path, env: dict[str, str], chart: Path, release: str, namespace: str,
           *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(helm), "template", release, str(chart), "--namespace", namespace, *args],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return conftest.documents(done.stdout)


def render_application(helm: Path, env: dict[str, str], app: dict[str, Any],
                       tmp: Path) -> list[dict[str, Any]]:
    source = app["spec"]["source"]
    values = tmp / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"].get("valuesObject", {})))
    crds = [] if source["helm"].get("skipCrds") else ["--include-crds"]
    return render(helm, env, conftest.ROOT / source["path"], source["helm"]["releaseName"],
                  app["spec"]["destination"]["namespace"], "-f", str(values), *crds)


def job(objects: list[dict[str, Any]], suffix: str = "-migrate") -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].endswith(suffix))


# --- the model of Argo CD's order, against Argo CD's documented rules ---------------------------


def annotated(kind: str, name: str, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "annotations": annotations}}


def test_helm_hooks_map_onto_argo_cd_phases() -> None:
    both = annotated("Job", "j", **{"helm.sh/hook": "post-install,pre-upgrade"})
    assert argocd_sync.phases(both) == (["PreSync", "PostSync"], True)
    argo_wins = annotated("Job", "j", **{"helm.sh/hook": "pre-upgrade",
                                         "argocd.argoproj.io/hook": "Sync"})
    assert argocd_sync.phases(argo_wins) == (["Sync"], True)
    assert argocd_sync.phases(annotated("Job", "j", **{"argocd.argoproj.io/hook": "Skip"})) == (
        [], True)
    assert argocd_sync.phases(annotated("ConfigMap", "c")) == (["Sync"], False)
    crd = annotated("CustomResourceDefinition", "c", **{"helm.sh/hook": "crd-install"})
    assert argocd_sync.phases(crd) == (["Sync"], False)


def test_waves_and_kinds_order_the_tasks() -> None:
    weighted = annotated("Job", "a", **{"helm.sh/hook-weight": "-5"})
    waved = annotated("ConfigMap", "b", **{"helm.sh/hook-weight": "-9",
                                           "argocd.argoproj.io/sync-wave": "3"})
    order = argocd_sync.tasks([
        waved, weighted, annotated("Deployment", "d"), annotated("ServiceAccount", "s"),
        annotated("ScaledObject", "o"), annotated("Namespace", "n"),
    ])
    assert [str(t) for t in order] == [
        "Sync/-5 Job/a", "Sync/0 Namespace/n", "Sync/0 ServiceAccount/s", "Sync/0 Deployment/d",
        "Sync/0 ScaledObject/o", "Sync/3 ConfigMap/b",
    ]


def test_the_old_helm_only_hook_is_caught(helm: Path, helm_env: dict[str, str]) -> None:
    """The migrate Job as a Helm hook only (post-install,pre-upgrade): Argo CD runs it in
    PreSync too, before the ConfigMap and the Secret exist, and every sync hangs."""
    objects = render(helm, helm_env, conftest.CHARTS / "uplion", "uplion", "uplion-test")
    assert argocd_sync.misordered(objects) == []
    old = copy.deepcopy(objects)
    annotations = job(old)["metadata"]["annotations"]
    for key in [k for k in annotations if k.startswith("argocd.argoproj.io/")]:
        del annotations[key]
    problems = argocd_sync.misordered(old)
    assert "PreSync/0 Job/uplion-migrate reads ConfigMap/uplion-config, applied at Sync/-2" in (
        problems)


# --- the charts, as each Application and scenario renders them --------------------------------


@pytest.mark.parametrize("name", sorted(helm_applications()))
def test_every_application_applies_what_a_job_reads_first(
    helm: Path, helm_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    objects = render_application(helm, helm_env, helm_applications()[name], tmp_path)
    assert argocd_sync.misordered(objects) == []


@pytest.mark.parametrize("values", UPLION_SCENARIOS, ids=[p.stem for p in UPLION_SCENARIOS])
@pytest.mark.parametrize("command", ["migrate", "bootstrap"])
def test_every_scenario_applies_what_a_job_reads_first(
    helm: Path, helm_env: dict[str, str], values: Path, command: str
) -> None:
    objects = render(helm, helm_env, conftest.CHARTS / "uplion", "rel", "uplion", "-f",
                     str(values), "--set", f"migrate.command={command}")
    assert argocd_sync.misordered(objects) == []


@pytest.mark.parametrize("name", sorted(n for n, a in helm_applications().items()
                                        if a["spec"]["source"]["path"] == "charts/uplion"))
def test_the_migration_runs_in_sync_before_the_workloads(
    helm: Path, helm_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    """A Sync hook, once per sync, after what it reads and before the new pods start (the
    database schema is migrated before the new version serves)."""
    objects = render_application(helm, helm_env, helm_applications()[name], tmp_path)
    tasks = argocd_sync.tasks(objects)
    migrate = [t for t in tasks if t.kind == "Job"]
    assert [(t.phase, t.hook) for t in migrate] == [("Sync", True)]
    workloads = [t for t in tasks if t.kind in ("Deployment", "StatefulSet", "DaemonSet")]
    assert workloads
    assert all(migrate[0].step() < t.step() for t in workloads)
    annotations = migrate[0].obj["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
    reads = argocd_sync.reads(migrate[0].obj, objects)
    assert {kind for kind, _ in reads} >= {"ConfigMap", "Secret", "ServiceAccount", "Role",
                                           "RoleBinding"}


def test_the_bootstrap_account_may_write_only_its_token_secret(
    helm: Path, helm_env: dict[str, str]
) -> None:
    objects = render(helm, helm_env, conftest.CHARTS / "uplion", "uplion", "uplion-test",
                     "--set", "migrate.command=bootstrap")
    migrate = job(objects)
    pod = migrate["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[:3] == ["admin", "bootstrap", "--token-secret"]
    role = next(o for o in objects if o["kind"] == "Role"
                and o["metadata"]["name"] == pod["serviceAccountName"])
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [args[3]],
         "verbs": ["get", "patch"]},
    ]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    plain = job(render(helm, helm_env, conftest.CHARTS / "uplion", "uplion", "uplion-test"))
    assert plain["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in plain["spec"]["template"]["spec"]
