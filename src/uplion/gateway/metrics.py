"""The gateway's Prometheus metrics, in a registry of its own (one per app, none global), and the
live figures per model version that rollouts gate on (``stats``).

A scrape reads only what is kept here: the topics' backlog is read from the broker by
``follow_backlog`` on an interval, so scrapes cost the broker nothing and still answer while it
is down (with the last figures read). Each model version's phase and replicas come from the
workers' heartbeats (``ModelsCollector``, read at scrape time from memory), and
``follow_replies`` checks on the same interval that this gateway's reply reader still reads
(``uplion_gateway_reply_reader_up``).

Label values are bounded: models, versions, protocols, statuses and the reasons of
``FAILURE_REASONS`` and ``REFUSAL_REASONS`` (anything else counts as ``other``); never a user,
a token or a prompt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from uplion import broker, protocol
from uplion.gateway import stats
from uplion.gateway.catalog import Catalog
from uplion.gateway.health import HealthBoard, Phase
from uplion.gateway.relay import Relay

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 120)

FAILURE_REASONS = frozenset({
    "timeout", "reply_chunks_lost", "engine_error", "model_failed", "model_not_supported",
    "task_redelivered_too_often", "context_length_exceeded", "upstream_error",
    "upstream_refused", "upstream_rate_limited", "upstream_unavailable", "broker_unavailable",
    "invalid_request_error",
})
"""The error codes ``uplion_request_failures_total`` names; any other code is ``other``."""

REFUSAL_REASONS = frozenset({"rate_limit_exceeded", "insufficient_quota", "model_failed",
                             "broker_unavailable"})
"""Why ``uplion_admissions_refused_total`` counts a request refused before any worker saw it."""


def bounded(reason: str | None, known: frozenset[str]) -> str:
    """``reason`` when it is one of ``known``, else ``other``: a label value from a fixed set."""
    return reason if reason in known else "other"


@dataclass(frozen=True, slots=True)
class RouteMetrics:
    """The labelled children of one model version and protocol, looked up once (labels() is not
    free), and the version's live series."""

    latency: Any
    queue_wait: Any
    engine_time: Any
    cancellations: Any
    deadline_misses: Any
    prompt_tokens: Any
    completion_tokens: Any
    live: stats.Series


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "uplion_requests",
            "Inference requests answered, by model, version, protocol and HTTP status.",
            ["model", "version", "protocol", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "uplion_request_duration_seconds", "Time from request to last byte of the answer.",
            ["model", "version", "protocol"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.queue_wait = Histogram(
            "uplion_queue_wait_seconds", "Time a task waited in its topic before a worker took it.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.engine_time = Histogram(
            "uplion_engine_duration_seconds", "Time from a worker taking the task to the end of "
            "the answer: the request's duration less its queue wait.",
            ["model", "version", "protocol"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.failures = Counter(
            "uplion_request_failures", "Requests that ended in an error after admission, by "
            "reason (the error's code, or other).",
            ["model", "version", "reason"], registry=self.registry,
        )
        self.refused = Counter(
            "uplion_admissions_refused", "Requests refused before a worker saw them: rate "
            "limit, quota, a Failed model, an unreachable broker.",
            ["model", "version", "reason"], registry=self.registry,
        )
        self.cancellations = Counter(
            "uplion_request_cancellations", "Requests whose client went away before the end.",
            ["model", "version"], registry=self.registry,
        )
        self.deadline_misses = Counter(
            "uplion_request_deadline_misses", "Requests not answered within their deadline.",
            ["model", "version"], registry=self.registry,
        )
        self.reply_reader_up = Gauge(
            "uplion_gateway_reply_reader_up", "1 while a probe sent to this gateway's reply "
            "address comes back through its reader, else 0 (answers cannot reach it).",
            registry=self.registry,
        )
        self.reply_probe = Gauge(
            "uplion_gateway_reply_probe_seconds", "How long the last probe took to come back "
            "through the reply reader.", registry=self.registry,
        )
        self.tokens = Counter(
            "uplion_tokens", "Tokens processed, by model and direction (prompt, completion).",
            ["model", "direction"], registry=self.registry,
        )
        self.backlog = Gauge(
            "uplion_topic_backlog", "Tasks in a model topic: waiting, or taken and not yet acked "
            "(read from the broker every metrics_refresh_s).",
            ["topic", "state"], registry=self.registry,
        )
        self.inflight = Gauge(
            "uplion_gateway_inflight", "Requests this gateway is waiting on.",
            registry=self.registry,
        )
        self.live = stats.LiveStats()

        self._routes: dict[tuple[str, str, str], RouteMetrics] = {}
        self._backlog_topics: set[str] = set()

    def route(self, model: str, version: str, kind: str) -> RouteMetrics:
        children = self._routes.get((model, version, kind))
        if children is None:
            children = RouteMetrics(
                latency=self.latency.labels(model, version, kind),
                queue_wait=self.queue_wait.labels(model, version),
                engine_time=self.engine_time.labels(model, version, kind),
                cancellations=self.cancellations.labels(model, version),
                deadline_misses=self.deadline_misses.labels(model, version),
                prompt_tokens=self.tokens.labels(model, "prompt"),
                completion_tokens=self.tokens.labels(model, "completion"),
                live=self.live.series(model, version),
            )
            self._routes[(model, version, kind)] = children
        return children

    def show_backlog(self, backlogs: dict[str, broker.Backlog]) -> None:
        """Set ``uplion_topic_backlog`` to ``backlogs``; a topic not among them loses its series."""
        for topic in self._backlog_topics - backlogs.keys():
            for state in ("waiting", "in_flight"):
                self.backlog.remove(topic, state)
        for topic, backlog in backlogs.items():
            self.backlog.labels(topic, "waiting").set(backlog.waiting)
            self.backlog.labels(topic, "in_flight").set(backlog.in_flight)
        self._backlog_topics = set(backlogs)

    def watch_models(self, board: HealthBoard, catalog: Catalog) -> None:
        """Serve each routed model version's phase and replicas, as ``board`` sees them."""
        self.registry.register(ModelsCollector(board, catalog))

    def include(self, registry: CollectorRegistry) -> None:
        """Serve the metrics of ``registry`` too (in-process workers, under ``uplion run``)."""
        self.registry.register(_Included(registry))

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


PHASES: tuple[Phase, ...] = get_args(Phase)


class ModelsCollector(Collector):
    """``uplion_model_phase`` and ``uplion_model_replicas`` of every model version the catalog
    routes, read from the health board at scrape time (it is in memory)."""

    def __init__(self, board: HealthBoard, catalog: Catalog) -> None:
        self._board = board
        self._catalog = catalog

    def collect(self) -> Iterator[Metric]:
        phase = GaugeMetricFamily(
            "uplion_model_phase", "1 for the phase a model version is in (Pending, Running, "
            "Degraded, Failed), from its workers' heartbeats; 0 for the others.",
            labels=["model", "version", "phase"])
        replicas = GaugeMetricFamily(
            "uplion_model_replicas", "Workers of a model version that heartbeat as serving.",
            labels=["model", "version", "topic"])
        now = time.time()
        for route in {(r.spec.name, r.spec.version, r.topic) for r in self._catalog.routes()}:
            model, version, topic = route
            health = self._board.of(model, version, now)
            for name in PHASES:
                phase.add_metric([model, version, name], 1.0 if health.phase == name else 0.0)
            replicas.add_metric([model, version, topic], health.replicas)
        yield phase
        yield replicas


class _Included(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


READ_TIMEOUT_S = 5.0
"""How long one reading of the backlog may take before it counts as failed."""


async def refresh_backlog(metrics: GatewayMetrics, source: broker.Broker, catalog: Catalog) -> None:
    """Read the backlog of every topic the catalog routes to into the metrics."""
    topics = {route.topic for route in catalog.routes()}
    metrics.show_backlog({topic: await source.backlog(topic, protocol.WORKER_GROUP)
                          for topic in sorted(topics)})


async def follow_backlog(
    metrics: GatewayMetrics, source: broker.Broker, catalog: Catalog, interval_s: float
) -> None:
    """``refresh_backlog`` every ``interval_s`` until cancelled; a failed (or hung) read keeps
    the last figures and is logged once until a read succeeds again."""
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with asyncio.timeout(max(interval_s, READ_TIMEOUT_S)):
                await refresh_backlog(metrics, source, catalog)
        except Exception as exc:
            if not failing:
                log.warning("cannot read the topics' backlog for /metrics (keeping the last "
                            "figures): %s", exc)
            failing = True
        else:
            failing = False


async def follow_replies(metrics: GatewayMetrics, replies: Relay, interval_s: float) -> None:
    """Every ``interval_s`` until cancelled, send a probe to this gateway's reply address and
    wait for it to come back through the reader (at most ``READ_TIMEOUT_S``)."""
    while True:
        took = await replies.probe(max(interval_s, READ_TIMEOUT_S))
        metrics.reply_reader_up.set(0 if took is None else 1)
        if took is not None:
            metrics.reply_probe.set(took)
        await asyncio.sleep(interval_s)
