"""A real Prometheus scrapes a running uplion under a short load; every query of every dashboard
and every alert rule then returns data for the series it names, and the rollout gate judges a
canary on every gateway's traffic through that Prometheus.

Two gateways, a worker of each version of ``echo`` (the canary, version 2, is slower and has a
1 s deadline) and the billing aggregator run as processes on Redis and PostgreSQL
(``tests/faults/cluster.py``); Prometheus scrapes the gateways' ``/metrics`` (admin token), the
workers' health ports and the aggregator's metrics port every second. The load covers what the
panels and rules show: answers on both versions through both gateways, a missed deadline, a
client that leaves mid-stream and a rate-limited token. A metric renamed in the code, a
dashboard or a rule leaves a query empty, and the test names it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests import helpers
from tests.faults import cluster
from tests.monitoring import promtool
from tests.monitoring.prometheus_server import PrometheusServer, running
from tests.ports import free_port
from tests.stores import PostgresServer
from uplion import rollout

MODELS = Path(__file__).parent / "models.yaml"
DATA_TIMEOUT_S = 90.0
STABLE, CANARY = 40, 12  # answered requests: echo@1 (no version pinned), echo@2 per gateway
WARMED = 2  # answers per version before the load (one through each gateway)
WARM = 'count(uplion_request_duration_seconds_count{model="echo"}) >= 4'
SUBSTITUTIONS = {"$__rate_interval": "10m", "$model": "echo", "$version": "1|2"}
EXTERNAL = ("kube_",)  # kube-state-metrics' series, which the monitoring stack provides
OPERATOR = "uplion_operator_"  # needs a cluster: tests/monitoring/test_operator_metrics.py
SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)(\{[^}]*\})?")


@dataclass
class Monitored:
    prometheus: PrometheusServer
    platform: cluster.Cluster
    workers: dict[str, str]  # worker name -> its health URL
    token_id: str


def _start(platform: cluster.Cluster) -> dict[str, str]:
    """Two gateways, a worker per version of echo, the aggregator with a metrics port."""
    waits: dict[str, str] = {}
    for name in ("gw1", "gw2"):
        port = free_port()
        platform.spawn(name, "gateway", "--models", str(MODELS), "--broker",
                        platform.broker_url, "--port", str(port))
        platform.gateways[name] = f"http://127.0.0.1:{port}"
        waits[name] = f"{platform.gateways[name]}/v2/health/ready"
    workers = {}
    for name, model in (("worker-1", "echo@1"), ("worker-2", "echo@2")):
        port = free_port()
        platform.spawn(name, "worker", "--models", str(MODELS), "--broker", platform.broker_url,
                        "--model", model, "--name", name,
                        env={"UPLION_HEALTH_PORT": str(port)})
        workers[name] = f"127.0.0.1:{port}"
        waits[name] = f"http://{workers[name]}/readyz"
    billing = free_port()
    platform.spawn("billing", "billing", env={"UPLION_METRICS_PORT": str(billing)})
    workers["billing"] = f"127.0.0.1:{billing}"
    for name, url in waits.items():
        platform.wait_ready(name, url)
    return workers


def _scrape_configs(platform: cluster.Cluster, targets: dict[str, str]) -> list[dict[str, Any]]:
    gateways = [url.removeprefix("http://") for url in platform.gateways.values()]
    return [
        {"job_name": "uplion-gateway", "static_configs": [{"targets": gateways}],
         "authorization": {"credentials": platform.admin_token}},
        {"job_name": "uplion-worker", "static_configs": [
            {"targets": [targets["worker-1"], targets["worker-2"]]}]},
        {"job_name": "uplion-billing", "static_configs": [{"targets": [targets["billing"]]}]},
    ]


@pytest.fixture(scope="module")
def monitored(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitored]:
    tmp = tmp_path_factory.mktemp("monitoring")
    with cluster.running(tmp, postgres_server.create_database()) as platform:
        targets = _start(platform)
        with running(tmp / "prometheus", _scrape_configs(platform, targets)) as prometheus:
            token_id, token = platform.token()
            _, limited = platform.token(limits={"requests_per_minute": 1})
            asyncio.run(_warm_up(platform, token))
            # rates need a sample before the load: wait until each route's series is scraped
            assert not _wait_for_data(prometheus, [("warm-up", WARM)])
            asyncio.run(_load(platform, token, limited))
            yield Monitored(prometheus, platform, targets, token_id)


async def _warm_up(platform: cluster.Cluster, token: str) -> None:
    """One answer per version through each gateway: their series exist before the load."""
    async with httpx.AsyncClient(timeout=30) as client:
        for base in platform.gateways.values():
            for model in ("echo", "echo@2"):
                response = await client.post(
                    f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                    json={"model": model, "messages": [{"role": "user", "content": "warm"}]})
                assert response.status_code == 200, response.text


async def _load(platform: cluster.Cluster, token: str, limited: str) -> None:
    gw1, gw2 = platform.gateways["gw1"], platform.gateways["gw2"]
    async with httpx.AsyncClient(timeout=30) as client:
        async def chat(base: str, model: str, content: str, bearer: str = token,
                       stream: bool = False) -> int:
            response = await client.post(
                f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {bearer}"},
                json={"model": model, "stream": stream,
                      "messages": [{"role": "user", "content": content}]})
            return response.status_code

        answered = await asyncio.gather(
            *(chat(gw1 if n % 2 else gw2, "echo", f"hello {n} from the stable", stream=n % 3 == 0)
              for n in range(STABLE)),
            *(chat(base, "echo@2", f"hello {n} from the canary")
              for base in (gw1, gw2) for n in range(CANARY)))
        assert set(answered) == {200}
        # a missed deadline: 60 words at 20 ms each pass the canary's 1 s
        assert await chat(gw2, "echo@2", " ".join(["word"] * 60)) == 504
        # a client that leaves mid-stream
        async with client.stream(
            "POST", f"{gw1}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
            json={"model": "echo@2", "stream": True,
                  "messages": [{"role": "user", "content": " ".join(["word"] * 40)}]},
        ) as stream:
            assert stream.status_code == 200
            async for _ in stream.aiter_lines():
                break
        # a token over its limit of one request a minute
        assert [await chat(gw1, "echo", "hi", bearer=limited) for _ in range(2)] == [200, 429]


def _dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) of every dashboard target, with its variables filled in."""
    found = []
    for path in sorted(promtool.DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in SUBSTITUTIONS.items():
                    expr = expr.replace(variable, value)
                found.append((f"{path.name}: {panel['title']} ({target['refId']})", expr))
    return found


def _rule_selectors() -> list[tuple[str, str]]:
    """(alert, selector) of every series an alert rule reads (kube-state-metrics' and the
    operator's aside)."""
    found = []
    for group in yaml.safe_load(promtool.RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name, matchers in SELECTOR.findall(rule["expr"]):
                if name.startswith("uplion_") and not name.startswith(OPERATOR):
                    found.append((rule["alert"], name + matchers))
                else:
                    assert name.startswith((*EXTERNAL, OPERATOR)) or name in _PROMQL, name
    return found


_PROMQL = {"max", "sum", "by", "deriv", "and", "offset", "histogram_quantile", "rate", "increase",
           "time", "on", "le", "model", "version", "topic", "namespace", "pod", "aimodel"}


def _wait_for_data(prometheus: PrometheusServer, queries: list[tuple[str, str]]) -> list[str]:
    """Poll until every query answers a finite value; those still empty at the deadline."""
    give_up = time.monotonic() + DATA_TIMEOUT_S
    while True:
        empty = [f"{where}: {expr}" for where, expr in queries if not prometheus.query(expr)]
        if not empty or time.monotonic() > give_up:
            return empty
        time.sleep(0.5)


@pytest.mark.redis
def test_every_dashboard_query_returns_data(monitored: Monitored) -> None:
    queries = _dashboard_queries()
    assert len(queries) > 30
    empty = _wait_for_data(monitored.prometheus, queries)
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


@pytest.mark.redis
def test_every_series_an_alert_reads_exists(monitored: Monitored) -> None:
    selectors = _rule_selectors()
    assert {alert for alert, _ in selectors} >= {
        "UplionModelFailed", "UplionBacklogGrowingWithoutScaleUp", "UplionHighLatencyP95",
        "UplionHighErrorRate", "UplionGatewayNoReplyReader", "UplionBillingLagging",
        "UplionBillingStalled", "UplionTasksRedelivered"}
    empty = _wait_for_data(monitored.prometheus, selectors)
    assert not empty, "alert rules reading series that do not exist:\n" + "\n".join(empty)
    rules = [rule for group in monitored.prometheus.api("rules")["groups"]
             for rule in group["rules"]]
    assert len(rules) == 11
    assert all(rule["health"] in ("ok", "unknown") for rule in rules), rules
    alerts = monitored.prometheus.api("alerts")["alerts"]
    firing = [alert["labels"]["alertname"] for alert in alerts]
    assert "UplionGatewayNoReplyReader" not in firing


@pytest.mark.redis
def test_a_renamed_metric_leaves_its_query_empty(monitored: Monitored) -> None:
    _wait_for_data(monitored.prometheus, [("requests", "uplion_requests_total")])
    assert not monitored.prometheus.query("uplion_request_total")
    assert monitored.prometheus.query("uplion_requests_total")


@pytest.mark.redis
def test_the_figures_are_those_of_the_load(monitored: Monitored) -> None:
    """The right series: what the gateways, the workers and billing count matches the load."""
    prometheus = monitored.prometheus
    answered = 'uplion_requests_total{model="echo",version="2",status="200"}'
    expected = {
        f"sum({answered})": 2 * CANARY + WARMED,
        'sum(uplion_requests_total{model="echo",version="1",status="200"})': STABLE + 1 + WARMED,
        'sum(uplion_request_deadline_misses_total{model="echo",version="2"})': 1,
        'sum(uplion_request_failures_total{model="echo",version="2",reason="timeout"})': 1,
        'sum(uplion_request_cancellations_total{model="echo",version="2"})': 1,
        'sum(uplion_admissions_refused_total{model="echo",reason="rate_limit_exceeded"})': 1,
        'count(count by (instance) (uplion_requests_total{model="echo",version="2"}))': 2,
        'sum(uplion_worker_tasks_total{model="echo",version="1",outcome="answered"})':
            STABLE + 1 + WARMED,
        'sum(uplion_worker_slots{model="echo"})': 12,
        'min(uplion_gateway_reply_reader_up)': 1,
        'sum(uplion_billing_tenant_requests_total{model="echo"})':
            STABLE + 1 + 2 * CANARY + 2 + 2 * WARMED,
    }
    give_up = time.monotonic() + DATA_TIMEOUT_S
    while True:
        seen = {expr: (prometheus.query(expr) or [{"value": [0, "nan"]}])[0]["value"][1]
                for expr in expected}
        wrong = {expr: seen[expr] for expr, want in expected.items()
                 if float(seen[expr]) != want}
        if not wrong or time.monotonic() > give_up:
            break
        time.sleep(0.5)
    assert not wrong, {expr: (got, expected[expr]) for expr, got in wrong.items()}
    ttft = prometheus.value(
        'sum(uplion_worker_time_to_first_token_seconds_count{model="echo",version="2"})')
    assert ttft >= 2 * CANARY


@pytest.mark.redis
def test_the_rollout_gate_judges_every_gateway_through_prometheus(monitored: Monitored) -> None:
    """The canary's figures from Prometheus count both gateways' requests; one gateway's own
    stats see only its share. Its missed deadline fails a 1 % error gate, and its p95 (20 ms a
    word) fails against the stable version's."""
    platform = monitored.platform
    total = 2 * CANARY + WARMED + 2  # answered through both gateways, the 504, the client gone

    async def judge(gates: rollout.Gates, baseline: str | None = None) -> rollout.Verdict:
        async with rollout.Gateway(platform.gateways["gw1"], admin_token=platform.admin_token) \
                as gateway, rollout.Prometheus(monitored.prometheus.url) as prometheus:
            return await rollout.evaluate(gateway, "echo", "2", 300, gates,
                                          prometheus=prometheus, baseline=baseline)

    counted = f'sum(uplion_requests_total{{model="echo",version="2"}}) >= {total}'
    assert not _wait_for_data(monitored.prometheus, [("canary", counted)])
    verdict = asyncio.run(judge(rollout.Gates(max_error_rate=0.1, max_p95_ms=5000,
                                              min_requests=total)))
    assert verdict.source == "prometheus"
    assert (verdict.figures["requests"], verdict.figures["errors"]) == (total, 1)
    assert verdict.passed, verdict.summary()
    stats = httpx.get(f"{platform.gateways['gw1']}/admin/stats", params={"window": "300"},
                      headers={"Authorization": f"Bearer {platform.admin_token}"}).json()
    one_gateway = next(e for e in stats["data"] if e["version"] == "2")["requests"]
    assert one_gateway < total

    strict = asyncio.run(judge(rollout.Gates(max_error_rate=0.01, max_p95_ms=5000,
                                             min_requests=total), baseline="1"))
    assert not strict.passed
    assert any("error rate" in failure for failure in strict.failures)
    assert any("times version 1's" in failure for failure in strict.failures), strict.failures

    command = subprocess.run(
        [sys.executable, "-m", "uplion", "rollout", "evaluate", "--model", "echo", "--version",
         "2", "--window", "300", "--min-requests", str(total), "--max-error-rate", "0.1",
         "--max-p95-ms", "5000", "--prometheus", monitored.prometheus.url,
         "--gateway", platform.gateways["gw2"]],
        capture_output=True, text=True, timeout=60, env=helpers._env(), check=False)
    assert command.returncode == 0, command.stdout + command.stderr
    assert json.loads(command.stdout.splitlines()[-1])["requests"] == total
