"""The monitoring stack (roles/monitoring, kube-prometheus-stack) and what depends on it: the
platform Applications' monitors, the rollout's Prometheus URL, and the one inventory switch
``uplion_monitoring`` behind all three.

The URL is checked against the Service the pinned chart really makes: three of its files at the
pinned tag (``data/charts/kube-prometheus-stack-<version>``) rendered by ``helm template`` with
the role's release name, namespace and values.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.bundle import chart_values, conftest
from tests.bundle.test_addons import INVENTORY, VAULT, objects, releases, render

ARGOCD = conftest.ROOT / "argocd"
CHART_PARTS = Path(__file__).parent / "data" / "charts"
ENVIRONMENTS = ("test", "staging", "production")
SELECTORS = ("serviceMonitor", "podMonitor", "rule", "probe", "scrapeConfig")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("monitoring")
    done = render(tmp, ["monitoring", "uplion_gitops"], {**VAULT, **INVENTORY})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return tmp / "out"


def _release(out: Path) -> dict[str, Any]:
    (release,) = releases(out, "monitoring")
    return release


def _platform(env: str) -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load((ARGOCD / "platform" / f"uplion-{env}.yaml").read_text())
    return app


def _settings(out: Path) -> dict[str, Any]:
    (settings,) = [o for o in objects(out, "uplion_gitops") if o["kind"] == "ConfigMap"]
    return settings


def test_prometheus_selects_every_namespaces_monitors_and_rules(rendered: Path) -> None:
    release = _release(rendered)
    assert (release["chart"], release["version"]) == ("kube-prometheus-stack", "88.5.3")
    spec = release["values"]["prometheus"]["prometheusSpec"]
    for kind in SELECTORS:
        assert spec[f"{kind}SelectorNilUsesHelmValues"] is False, kind
    upstream = chart_values.defaults("kube-prometheus-stack", "88.5.3")
    for kind in SELECTORS:  # and the chart's namespace selectors stay {}: every namespace
        assert upstream["prometheus"]["prometheusSpec"][f"{kind}NamespaceSelector"] == {}
        assert f"{kind}NamespaceSelector" not in spec


def test_prometheus_grafana_and_alertmanager_keep_their_data(rendered: Path) -> None:
    values = _release(rendered)["values"]
    prometheus = values["prometheus"]["prometheusSpec"]["storageSpec"]["volumeClaimTemplate"]
    alertmanager = values["alertmanager"]["alertmanagerSpec"]["storage"]["volumeClaimTemplate"]
    assert prometheus["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert alertmanager["spec"]["resources"]["requests"]["storage"] == "2Gi"
    grafana = values["grafana"]["persistence"]
    assert (grafana["enabled"], grafana["type"], grafana["size"]) == (True, "pvc", "10Gi")
    # No class named: every claim gets the cluster's default StorageClass.
    for claim in (prometheus["spec"], alertmanager["spec"], grafana):
        assert "storageClassName" not in claim
    assert values["prometheus"]["prometheusSpec"]["retentionSize"] == "45GB"


def test_the_platforms_storage_class_reaches_every_claim(tmp_path: Path) -> None:
    done = render(tmp_path, ["monitoring"], {"uplion_storage_class": "local-path",
                                             "monitoring_alertmanager_enabled": False})
    assert done.returncode == 0, done.stdout[-4000:]
    values = _release(tmp_path / "out")["values"]
    prometheus = values["prometheus"]["prometheusSpec"]["storageSpec"]["volumeClaimTemplate"]
    assert prometheus["spec"]["storageClassName"] == "local-path"
    assert values["grafana"]["persistence"]["storageClassName"] == "local-path"
    assert values["alertmanager"]["enabled"] is False
    upstream = chart_values.defaults("kube-prometheus-stack", "88.5.3")
    assert chart_values.unknown_keys("kube-prometheus-stack", upstream, values) == []


def test_grafanas_sidecar_loads_the_charts_dashboards_from_every_namespace(
    rendered: Path,
) -> None:
    sidecar = _release(rendered)["values"]["grafana"]["sidecar"]["dashboards"]
    chart = yaml.safe_load((conftest.CHARTS / "uplion" / "values.yaml").read_text())
    labels = chart["metrics"]["dashboards"]["labels"]
    assert sidecar["enabled"] is True
    assert labels == {sidecar["label"]: sidecar["labelValue"]}
    assert sidecar["searchNamespace"] == "ALL"


def test_kubeadms_loopback_control_plane_is_not_scraped(rendered: Path) -> None:
    values = _release(rendered)["values"]
    for component in ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy"):
        assert values[component]["enabled"] is False, component


def test_the_namespace_admits_node_exporter(
    rendered: Path, validate_object: Callable[[dict[str, Any]], None],
) -> None:
    (namespace,) = objects(rendered, "monitoring")
    assert namespace["metadata"]["name"] == _release(rendered)["namespace"] == "monitoring"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    validate_object(namespace)


def _prometheus_service(
    helm: Path, helm_env: dict[str, str], release: dict[str, Any], tmp: Path
) -> dict[str, Any]:
    """The Prometheus Service of the pinned chart, rendered with the role's release."""
    chart = tmp / "kube-prometheus-stack"
    shutil.copytree(CHART_PARTS / f"kube-prometheus-stack-{release['version']}", chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    assert meta["version"] == release["version"]
    meta["dependencies"] = []  # the subcharts make no Prometheus Service
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    defaults = chart_values.DATA / f"kube-prometheus-stack-{release['version']}.json"
    (chart / "values.yaml").write_text(defaults.read_text())  # JSON is YAML
    values = tmp / "role-values.json"
    values.write_text(json.dumps(release["values"]))
    done = subprocess.run(
        [str(helm), "template", release["name"], str(chart), "--namespace",
         release["namespace"], "-f", str(values), "--show-only",
         "templates/prometheus/service.yaml"],
        capture_output=True, text=True, env=helm_env, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    (service,) = conftest.documents(done.stdout)
    return service


def test_the_rollouts_prometheus_url_names_the_service_the_chart_makes(
    rendered: Path, helm: Path, helm_env: dict[str, str], tmp_path: Path,
    validate_object: Callable[[dict[str, Any]], None],
) -> None:
    service = _prometheus_service(helm, helm_env, _release(rendered), tmp_path)
    port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http-web")
    expected = (f"http://{service['metadata']['name']}.{service['metadata']['namespace']}"
                f".svc.cluster.local:{port}")
    assert expected == "http://kube-prometheus-stack-prometheus.monitoring.svc.cluster.local:9090"
    settings = _settings(rendered)
    assert settings["data"] == {"prometheus-url": expected}
    assert settings["metadata"]["namespace"] == "argo"
    assert settings["metadata"]["labels"]["workflows.argoproj.io/configmap-type"] == "Parameter"
    validate_object(settings)


def test_the_workflow_template_reads_its_prometheus_url_from_those_settings(
    rendered: Path,
) -> None:
    template = yaml.safe_load((conftest.ROOT / "workflows" / "model-rollout.yaml").read_text())
    (parameter,) = [p for p in template["spec"]["arguments"]["parameters"]
                    if p["name"] == "prometheus-url"]
    settings = _settings(rendered)
    assert parameter["valueFrom"]["configMapKeyRef"] == {
        "name": settings["metadata"]["name"], "key": "prometheus-url"}
    assert settings["metadata"]["namespace"] == template["metadata"]["namespace"]
    assert parameter["valueFrom"]["default"] == ""  # no settings yet: the gateway's own stats
    evaluate = next(t for t in template["spec"]["templates"] if t["name"] == "evaluate")
    args = evaluate["container"]["args"]
    assert "--prometheus={{workflow.parameters.prometheus-url}}" in args
    # each gate judges its own environment's gateways: the namespace its platform runs in
    match = next(a for a in args if a.startswith("--prometheus-match="))
    for env in ENVIRONMENTS:
        namespace = _platform(env)["spec"]["destination"]["namespace"]
        assert match.replace("{{inputs.parameters.environment}}", env) == (
            f'--prometheus-match=namespace="{namespace}"')


def test_without_the_stack_the_rollout_reads_the_gateways_and_nothing_is_installed(
    tmp_path: Path,
) -> None:
    """``uplion_monitoring: false`` turns the stack off, and the gitops role stops: the platform
    Applications in git still enable the monitors, which Argo CD could not apply."""
    done = render(tmp_path, ["monitoring"], {"uplion_monitoring": False})
    assert done.returncode == 0, done.stdout[-4000:]
    assert releases(tmp_path / "out", "monitoring") == []
    assert objects(tmp_path / "out", "monitoring") == []
    done = render(tmp_path, ["uplion_gitops"], {**VAULT, **INVENTORY, "uplion_monitoring": False})
    assert done.returncode != 0
    message = " ".join(done.stdout.split())
    assert ("argocd/platform/uplion-test.yaml enables metrics.serviceMonitor but "
            "uplion_monitoring is false") in message, done.stdout[-3000:]


def test_the_gitops_role_writes_an_empty_url_without_the_stack(tmp_path: Path) -> None:
    done = render(tmp_path, ["uplion_gitops"], {
        **VAULT, **INVENTORY, "uplion_gitops_monitoring": False,
        # the check reads the Applications from here: a copy with the monitors off
        "uplion_gitops_platform_applications_dir": str(_applications_without_monitors(tmp_path))})
    assert done.returncode == 0, done.stdout[-4000:]
    assert _settings(tmp_path / "out")["data"] == {"prometheus-url": ""}


def _applications_without_monitors(tmp: Path) -> Path:
    folder = tmp / "argocd" / "platform"
    folder.mkdir(parents=True)
    for env in ENVIRONMENTS:
        app = _platform(env)
        app["spec"]["source"]["helm"]["valuesObject"].pop("metrics")
        (folder / f"uplion-{env}.yaml").write_text(yaml.safe_dump(app))
    return folder


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_each_platform_scrapes_its_own_workers_once(env: str) -> None:
    """Three releases each scraping every namespace's workers would count every worker thrice."""
    metrics = _platform(env)["spec"]["source"]["helm"]["valuesObject"]["metrics"]
    assert metrics["serviceMonitor"]["enabled"] is True
    assert metrics["serviceMonitor"]["workerNamespaces"] == [
        _platform(env)["spec"]["destination"]["namespace"]]


def test_rules_and_dashboards_ship_once() -> None:
    """The alert rules and dashboards cover every environment (their queries are fleet-wide,
    the dashboards' uids fixed): one platform ships them, production."""
    shipping = {
        env: {part for part in ("prometheusRule", "dashboards")
              if _platform(env)["spec"]["source"]["helm"]["valuesObject"]["metrics"]
              .get(part, {}).get("enabled")}
        for env in ENVIRONMENTS
    }
    assert shipping == {"test": set(), "staging": set(),
                        "production": {"prometheusRule", "dashboards"}}
