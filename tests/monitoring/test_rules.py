"""The alert rules the chart ships, checked and unit-tested by ``promtool`` itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.monitoring import promtool

CASES = Path(__file__).parent / "rules_test.yaml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool.binary("promtool"), *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=CASES.parent)


def test_rules_are_valid() -> None:
    done = _promtool("check", "rules", str(promtool.RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    done = _promtool("test", "rules", CASES.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_test_and_a_runbook() -> None:
    alerts = [rule for group in yaml.safe_load(promtool.RULES.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule]
    tested = {case["alertname"] for test in yaml.safe_load(CASES.read_text())["tests"]
              for case in test.get("alert_rule_test", ()) if case["exp_alerts"]}
    runbook = (promtool.ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        name = alert["alert"]
        assert name in tested, f"{name} has no promtool case that fires it"
        assert alert["annotations"]["runbook_url"].endswith(f"operations.md#{name.lower()}")
        assert f"### {name}" in runbook, f"docs/operations.md has no runbook for {name}"
        assert alert["labels"]["severity"] in ("warning", "critical")
