"""A role's Helm values checked against the real chart's default values, offline.

``data/chart-values/<chart>-<version>.json`` is the chart's ``values.yaml`` at the pinned
version (see that folder's README). Every key a role sets must be a key of those defaults, down
to where the chart takes a free-form map: an empty map or null default, a list, or a path listed
in ``FREE_FORM`` (maps that come with example entries but take any key, such as Pulsar's
``configData`` or Argo CD's ``configs.cm``). A scalar default given a map or a list is refused too.
A subchart's values (kube-prometheus-stack's ``grafana``) are checked against that subchart's own
vendored defaults, together with the keys the parent chart adds under them (``SUBCHARTS``).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "chart-values"

# Istio's charts keep their defaults under this key; users set the keys at the top level.
_ISTIO_WRAPPER = "_internal_defaults_do_not_set"

FREE_FORM: dict[str, tuple[str, ...]] = {
    "pulsar": ("*.configData",),
    "argo-cd": ("configs.cm", "configs.params", "configs.rbac"),
    "istiod": ("meshConfig",),
}
"""Per chart, the paths (fnmatch patterns on dotted paths) whose maps take any key."""

DOCUMENTED: dict[str, tuple[str, ...]] = {
    "grafana": ("persistence.storageClassName",),
}
"""Per chart, keys its values.yaml documents only in a comment (no default), as dotted paths."""

SUBCHARTS: dict[str, dict[str, str]] = {
    "kube-prometheus-stack-88.5.3": {"grafana": "grafana-12.11.1"},
}
"""Per ``<chart>-<version>``, the values key of each subchart whose values a role sets, and the
subchart's ``<chart>-<version>`` (the dependencies of the chart's Chart.yaml at that tag)."""


def available() -> list[str]:
    """``<chart>-<version>`` of every vendored file."""
    return sorted(path.stem for path in DATA.glob("*.json"))


def _vendored(chart: str, version: str) -> dict[str, Any]:
    path = DATA / f"{chart}-{version}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no vendored values for chart {chart} {version} (have {available()}): fetch the "
            f"chart at that version into {DATA} (README there)")
    tree: dict[str, Any] = json.loads(path.read_text())
    tree = tree.get(_ISTIO_WRAPPER, tree) if set(tree) == {_ISTIO_WRAPPER} else tree
    for dotted in DOCUMENTED.get(chart, ()):
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node[key]
        node.setdefault(leaf, None)
    return tree


def subcharts(chart: str, version: str) -> dict[str, str]:
    """The subcharts (values key: ``<chart>-<version>``) whose values are vendored too."""
    return SUBCHARTS.get(f"{chart}-{version}", {})


def _merged(parent: Any, child: dict[str, Any]) -> dict[str, Any]:
    """The subchart's defaults with the parent's keys under its values key added."""
    merged = dict(child)
    for key, value in (parent if isinstance(parent, dict) else {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(value, merged[key])
        else:
            merged.setdefault(key, value)
    return merged


def defaults(chart: str, version: str) -> dict[str, Any]:
    """The chart's default values at ``version`` (its subcharts' under their keys); a clear
    failure when none is vendored."""
    tree = _vendored(chart, version)
    for key, sub in subcharts(chart, version).items():
        name, _, sub_version = sub.rpartition("-")
        tree[key] = _merged(tree.get(key), _vendored(name, sub_version))
    return tree


def unknown_keys(chart: str, upstream: Any, values: Any, path: str = "") -> list[str]:
    """What in ``values`` the chart's defaults ``upstream`` do not have, one line each."""
    if any(fnmatch.fnmatchcase(path, pattern) for pattern in FREE_FORM.get(chart, ())):
        return []
    if upstream is None or upstream == {} or isinstance(upstream, list):
        return []
    if not isinstance(upstream, dict):
        if isinstance(values, dict | list):
            return [f"{path}: the chart's default is {upstream!r}, not a map or a list"]
        return []
    if not isinstance(values, dict):
        return [f"{path}: the chart expects a map with keys {sorted(upstream)}"]
    found: list[str] = []
    for key, value in values.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in upstream:
            found.append(f"{where}: not a value of the chart (its keys here: "
                         f"{', '.join(sorted(upstream))})")
        else:
            found += unknown_keys(chart, upstream[key], value, where)
    return found
