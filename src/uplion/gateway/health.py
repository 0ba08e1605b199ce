"""Each model's health, from its workers' heartbeats: Pending, Running, Degraded or Failed.

Workers announce their status every few seconds on the broker; a worker not heard from for
``STALE_AFTER_S`` is gone. For one model version:

- Running: live workers, all healthy. Degraded: live workers, some degraded (e.g. upstream
  accounts down) or some failed while others serve.
- Failed: no healthy worker, and a failure (with its reason and message) that no healthy worker
  started after. It stays Failed until a worker started after the failure announces itself
  healthy (the configuration was fixed and the worker restarted), however long that takes.
- Pending: no live worker and no failure: not started yet, or scaled to zero. Requests are
  accepted and wait in the queue for a worker to start.

Heartbeats also carry what the loaded model says about itself (``protocol.ModelInfo``: what it
serves, its device, its v2 tensors); the board keeps the newest per model version, and keeps it
when the workers scale to zero, so v2 metadata still describes the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from uplion import protocol

STALE_AFTER_S = 10.0

Phase = Literal["Pending", "Running", "Degraded", "Failed"]


@dataclass(frozen=True, slots=True)
class ModelHealth:
    phase: Phase
    replicas: int
    slots: int
    busy: int
    reason: str | None = None
    message: str | None = None

    @property
    def ready(self) -> bool:
        return self.phase in ("Running", "Degraded")

    def as_json(self) -> dict[str, object]:
        return {"phase": self.phase, "ready": self.ready, "replicas": self.replicas,
                "slots": self.slots, "busy": self.busy, "reason": self.reason,
                "message": self.message}


class HealthBoard:
    """The latest status of every worker, folded per model version on demand."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], dict[str, protocol.WorkerStatus]] = {}
        self._info: dict[tuple[str, str], tuple[float, protocol.ModelInfo]] = {}

    def record(self, status: protocol.WorkerStatus) -> None:
        key = (status.model, status.version)
        workers = self._models.setdefault(key, {})
        known = workers.get(status.worker)
        if known is None or known.at <= status.at:
            workers[status.worker] = status
        newest = self._info.get(key)
        if status.info is not None and (newest is None or newest[0] <= status.at):
            self._info[key] = (status.at, status.info)

    def info(self, model: str, version: str) -> protocol.ModelInfo | None:
        """What the newest heartbeat said about the loaded model; ``None`` before any did."""
        newest = self._info.get((model, version))
        return newest[1] if newest else None

    def of(self, model: str, version: str, now: float | None = None) -> ModelHealth:
        now = time.time() if now is None else now
        statuses = list(self._models.get((model, version), {}).values())
        live = [s for s in statuses
                if s.state in ("starting", "running", "degraded") and now - s.at < STALE_AFTER_S]
        serving = [s for s in live if s.state in ("running", "degraded")]
        failures = [s for s in statuses if s.state == "failed"]
        latest_failure = max(failures, key=lambda s: s.at, default=None)
        newest_start = max((s.started for s in serving), default=0.0)
        slots, busy = sum(s.slots for s in serving), sum(s.busy for s in serving)
        if latest_failure is not None and latest_failure.at > newest_start:
            phase: Phase = "Degraded" if serving else "Failed"
            return ModelHealth(phase, len(serving), slots, busy, latest_failure.reason,
                               latest_failure.message)
        if not serving:
            return ModelHealth("Pending", 0, 0, 0, None,
                               "no worker is running (starting, or scaled to zero)")
        degraded = [s for s in serving if s.state == "degraded"]
        if degraded:
            return ModelHealth("Degraded", len(serving), slots, busy, "WorkersDegraded",
                               "; ".join(sorted({s.message or s.worker for s in degraded})))
        return ModelHealth("Running", len(serving), slots, busy)
