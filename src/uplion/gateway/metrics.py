"""The gateway's Prometheus metrics, in a registry of its own (one per app, none global), and the
live figures per model version that rollouts gate on (``stats``).

A scrape reads only what is kept here: the topics' backlog is read from the broker by
``follow_backlog`` on an interval, so scrapes cost the broker nothing and still answer while it
is down (with the last figures read).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from uplion import broker, protocol
from uplion.gateway import stats
from uplion.gateway.catalog import Catalog

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 120)


@dataclass(frozen=True, slots=True)
class RouteMetrics:
    """The labelled children of one model version and protocol, looked up once (labels() is not
    free), and the version's live series."""

    latency: Any
    queue_wait: Any
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
            ["model"], buckets=LATENCY_BUCKETS, registry=self.registry,
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
                queue_wait=self.queue_wait.labels(model),
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

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


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
