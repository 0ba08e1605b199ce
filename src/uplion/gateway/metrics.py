"""The gateway's Prometheus metrics, in a registry of its own (one per app, none global), and the
live figures per model version that rollouts gate on (``stats``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from uplion.gateway import stats

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
            "uplion_topic_backlog", "Tasks in a model topic: waiting, or taken and not yet acked.",
            ["topic", "state"], registry=self.registry,
        )
        self.inflight = Gauge(
            "uplion_gateway_inflight", "Requests this gateway is waiting on.",
            registry=self.registry,
        )
        self.live = stats.LiveStats()

        self._routes: dict[tuple[str, str, str], RouteMetrics] = {}

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

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
