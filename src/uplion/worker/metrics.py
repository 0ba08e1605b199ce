"""A worker's Prometheus metrics, served at ``/metrics`` on its health port (``probes``).

One registry per process (the in-process replicas of ``uplion run`` share it); every series is
labelled by model and version only, so a scrape of a pod names nothing but what it serves.
Gauges of slots are added to and taken from by each worker, so replicas sharing a registry sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from uplion import protocol

TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                         30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

OUTCOMES = ("answered", "failed", "cancelled", "lost", "expired", "deadline", "released")
"""How a task taken by a worker ended (``uplion_worker_tasks_total``'s ``outcome``)."""


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.ttft = Histogram(
            "uplion_worker_time_to_first_token_seconds",
            "Time from a task's start on the worker to the engine's first token.",
            labels, buckets=TOKEN_LATENCY_BUCKETS, registry=self.registry,
        )
        self.tpot = Histogram(
            "uplion_worker_time_per_output_token_seconds",
            "Time per output token after the first, per generation.",
            labels, buckets=TOKEN_LATENCY_BUCKETS, registry=self.registry,
        )
        self.tokens = Counter(
            "uplion_worker_tokens", "Tokens the engine read (prompt) and wrote (completion).",
            [*labels, "direction"], registry=self.registry,
        )
        self.tasks = Counter(
            "uplion_worker_tasks", "Tasks taken, by how they ended (answered, failed, "
            "cancelled, lost, expired, deadline, released).",
            [*labels, "outcome"], registry=self.registry,
        )
        self.redelivered = Counter(
            "uplion_worker_tasks_redelivered", "Tasks taken that an earlier worker had taken "
            "and never answered (a crash, an out-of-memory kill, a stall).",
            labels, registry=self.registry,
        )
        self.batch = Histogram(
            "uplion_worker_batch_size", "Tasks handed to the engine together: those taken "
            "from the broker at once.", labels, buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.load = Gauge(
            "uplion_worker_engine_load_seconds", "How long the engine took to load the model.",
            labels, registry=self.registry,
        )
        self.fetch = Gauge(
            "uplion_worker_model_fetch_seconds", "How long fetching the model's artifact took "
            "(0 when the init container fetched it).", labels, registry=self.registry,
        )
        self.slots = Gauge(
            "uplion_worker_slots", "Task slots of the running workers.", labels,
            registry=self.registry,
        )
        self.busy = Gauge(
            "uplion_worker_slots_busy", "Task slots holding a task.", labels,
            registry=self.registry,
        )

    def of(self, model: str, version: str) -> ModelMetrics:
        """The children of one model version (labels() looked up once)."""
        return ModelMetrics(
            ttft=self.ttft.labels(model, version), tpot=self.tpot.labels(model, version),
            prompt_tokens=self.tokens.labels(model, version, "prompt"),
            completion_tokens=self.tokens.labels(model, version, "completion"),
            tasks={outcome: self.tasks.labels(model, version, outcome) for outcome in OUTCOMES},
            redelivered=self.redelivered.labels(model, version),
            batch=self.batch.labels(model, version), load=self.load.labels(model, version),
            fetch=self.fetch.labels(model, version), slots=self.slots.labels(model, version),
            busy=self.busy.labels(model, version),
        )

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    ttft: Any
    tpot: Any
    prompt_tokens: Any
    completion_tokens: Any
    tasks: dict[str, Any]
    redelivered: Any
    batch: Any
    load: Any
    fetch: Any
    slots: Any
    busy: Any

    def ended(self, outcome: str) -> None:
        self.tasks[outcome].inc()

    def generated(self, started: float, first_token: float | None, usage: protocol.Usage) -> None:
        """Count one answer's tokens and, when it generated text, its token latencies
        (``started`` and ``first_token`` are ``time.monotonic()`` readings)."""
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        if first_token is None:
            return
        self.ttft.observe(first_token - started)
        if usage.completion_tokens > 1:
            self.tpot.observe((time.monotonic() - first_token) / (usage.completion_tokens - 1))
