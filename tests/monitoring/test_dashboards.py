"""The Grafana dashboards the chart ships: valid dashboard JSON (``dashboard_schema``), with
unique panel ids and refIds, panels that do not overlap, known units, and only the variables
they declare."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.monitoring import dashboard_schema
from tests.monitoring.promtool import DASHBOARDS

FILES = sorted(DASHBOARDS.glob("*.json"))
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}
UNITS = {"reqps", "percentunit", "s", "short", "none", "ops", "bool_yes_no"}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_the_chart_ships_the_fleet_and_model_dashboards() -> None:
    assert [path.name for path in FILES] == ["fleet.json", "model.json"]
    assert len({load(path)["uid"] for path in FILES}) == len(FILES)


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_dashboard_is_valid(path: Path) -> None:
    dashboard = load(path)
    jsonschema.Draft202012Validator(dashboard_schema.SCHEMA).validate(dashboard)
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids repeat"
    declared = {variable["name"] for variable in dashboard["templating"]["list"]}
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        unit = panel["fieldConfig"]["defaults"]["unit"]
        assert unit in UNITS or unit.startswith("suffix:"), f"{panel['title']}: unit {unit}"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), f"{panel['title']}: refIds repeat"
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= declared | GRAFANA_VARIABLES, f"{panel['title']}: {used - declared}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_a_broken_dashboard_is_refused() -> None:
    """The schema has teeth: a panel without a unit, or on a fixed data source, fails."""
    dashboard = load(FILES[0])
    del dashboard["panels"][0]["fieldConfig"]["defaults"]["unit"]
    with pytest.raises(jsonschema.ValidationError, match="'unit' is a required property"):
        jsonschema.validate(dashboard, dashboard_schema.SCHEMA)
    dashboard = load(FILES[0])
    dashboard["panels"][1]["datasource"] = {"type": "prometheus", "uid": "prod-prometheus"}
    with pytest.raises(jsonschema.ValidationError, match="datasource"):
        jsonschema.validate(dashboard, dashboard_schema.SCHEMA)
