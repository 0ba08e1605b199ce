"""``evaluate --prometheus-match``: one Prometheus scrapes every environment's gateways, so a
gate's queries select one environment's series (the WorkflowTemplate passes its namespace)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from uplion.cli import app
from uplion.rollout import prometheus


def test_every_query_selects_only_the_matched_series() -> None:
    found = prometheus.queries("chat", "2", 60, 'namespace="uplion-staging"')
    assert len(found) == 4
    for query in found.values():
        selectors = query.count("{model=")
        assert selectors >= 2  # the value now and a window ago
        assert query.count(',namespace="uplion-staging"}') == selectors, query
    assert ',status=~"5..",namespace="uplion-staging"}' in found["errors"]


def test_without_matchers_the_queries_cover_every_series() -> None:
    assert prometheus.queries("chat", "2", 60, "") == prometheus.queries("chat", "2", 60)
    assert "namespace" not in "".join(prometheus.queries("chat", "2", 60).values())


@pytest.mark.parametrize("match", [
    'namespace="uplion-staging"', ' namespace = "a" , job=~"uplion-.*"', 'x!="a\\"b"',
])
def test_label_matchers_are_taken(match: str) -> None:
    assert prometheus.matchers(match).startswith(",")


@pytest.mark.parametrize("match", [
    "namespace=uplion-staging", 'namespace="a"}', '{namespace="a"}', 'namespace="a",', "9x=\"a\"",
])
def test_anything_else_is_refused_naming_the_option(match: str) -> None:
    with pytest.raises(ValueError, match="--prometheus-match"):
        prometheus.matchers(match)


def test_the_cli_refuses_a_bad_matcher_before_any_request() -> None:
    result = CliRunner().invoke(app, [
        "rollout", "evaluate", "--model", "chat", "--version", "2", "--prometheus",
        "http://127.0.0.1:9", "--prometheus-match", "namespace=staging",
        "--gateway", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "--prometheus-match" in result.output
    assert "namespace=staging" in result.output
