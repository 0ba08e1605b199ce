"""Each add-on role's Helm values against the real chart at the pinned version, offline.

The chart's default values come from ``data/chart-values`` (vendored from the upstream
repository at the tag of the pinned version); ``chart_values`` says which keys are known. A key
the chart does not have (a typo, a key from another chart version) fails here, where Helm would
ignore it and install something else than asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bundle import chart_values
from tests.bundle.test_addons import ADDONS, INVENTORY, VAULT, releases, render


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("chart-values")
    # A StorageClass named: the claims then carry every storage key the roles can set.
    done = render(tmp, list(ADDONS), {**VAULT, **INVENTORY, "uplion_storage_class": "fast"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return tmp / "out"


def _all(rendered: Path) -> list[dict[str, Any]]:
    return [release for role in ADDONS for release in releases(rendered, role)]


@pytest.mark.parametrize("role", ADDONS)
def test_releases_are_pinned_and_set_only_the_charts_values(rendered: Path, role: str) -> None:
    found = releases(rendered, role)
    assert found
    for release in found:
        assert release["repo_url"].startswith("https://")
        assert release["version"][0] in "v0123456789"
        assert not set("*^~><x") & set(release["version"])
        upstream = chart_values.defaults(release["chart"], release["version"])
        assert chart_values.unknown_keys(release["chart"], upstream, release["values"]) == []


def test_every_vendored_chart_is_a_pinned_one(rendered: Path) -> None:
    pinned = {f"{r['chart']}-{r['version']}" for r in _all(rendered)}
    pinned |= {sub for r in _all(rendered)
               for sub in chart_values.subcharts(r["chart"], r["version"]).values()}
    assert set(chart_values.available()) == pinned


@pytest.mark.parametrize(
    ("chart", "path", "typo"),
    [
        ("keda", ["operator", "replicaCount"], "replicas"),
        ("gpu-operator", ["driver", "enabled"], "enable"),
        ("istiod", ["replicaCount"], "replicas"),
        ("gateway", ["service", "type"], "kind"),
        ("pulsar", ["broker", "replicaCount"], "replica_count"),
        ("argo-cd", ["configs", "cm"], "cms"),
        ("argo-workflows", ["controller", "workflowNamespaces"], "workflowNamespace"),
        ("kube-prometheus-stack",
         ["prometheus", "prometheusSpec", "serviceMonitorSelectorNilUsesHelmValues"],
         "serviceMonitorSelectorNilUsesHelmValue"),
        ("kube-prometheus-stack", ["grafana", "persistence", "storageClassName"], "storageClass"),
        ("kube-prometheus-stack", ["grafana", "sidecar", "dashboards", "searchNamespace"],
         "searchNamespaces"),
    ],
)
def test_a_misspelt_value_key_fails(
    rendered: Path, chart: str, path: list[str], typo: str
) -> None:
    release = next(r for r in _all(rendered) if r["chart"] == chart)
    parent = release["values"]
    for key in path[:-1]:
        parent = parent[key]
    parent[typo] = parent.pop(path[-1])
    upstream = chart_values.defaults(chart, release["version"])
    errors = chart_values.unknown_keys(chart, upstream, release["values"])
    assert len(errors) == 1
    assert errors[0].startswith(".".join([*path[:-1], typo]) + ": not a value of the chart")


def test_istiod_takes_pilots_settings_at_its_top_level(rendered: Path) -> None:
    """The `pilot:` map of older istiod charts is ignored by 1.30's: replicas, autoscaling and
    resources would silently fall back to the chart's (an HPA, 500m CPU and 2 GiB)."""
    istiod = next(r for r in _all(rendered) if r["chart"] == "istiod")
    upstream = chart_values.defaults("istiod", istiod["version"])
    assert chart_values.unknown_keys("istiod", upstream, {"pilot": {"replicaCount": 1}})
    assert istiod["values"]["autoscaleEnabled"] is False


def test_a_map_where_the_chart_has_a_scalar_fails() -> None:
    upstream = chart_values.defaults("keda", "2.20.2")
    assert chart_values.unknown_keys("keda", upstream, {"operator": {"replicaCount": {"n": 1}}})


def test_a_chart_version_without_vendored_values_says_what_to_do() -> None:
    with pytest.raises(FileNotFoundError, match=r"no vendored values for chart keda 9\.9\.9"):
        chart_values.defaults("keda", "9.9.9")
