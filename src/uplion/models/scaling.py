"""The one scaling rule, shared by the operator (for KEDA) and the local runtime.

``desired = clamp(ceil(backlog / target_backlog), min, max)``, where the backlog counts the tasks
waiting in the model's topic and those taken but not yet answered. Scaling up is immediate;
scaling down waits until the lower count has held for ``idle_seconds`` (KEDA's cooldown), so a
short lull does not stop workers that the next burst needs.
"""

from __future__ import annotations

import math

from uplion.models.spec import ReplicaSpec


def desired_replicas(backlog: int, replicas: ReplicaSpec) -> int:
    wanted = math.ceil(max(0, backlog) / replicas.target_backlog)
    return max(replicas.min, min(replicas.max, wanted))


class ScaleDecider:
    """Turns backlog readings over time into a replica count, with the scale-down cooldown."""

    def __init__(self, replicas: ReplicaSpec) -> None:
        self.replicas = replicas
        self._lower_since: float | None = None

    def decide(self, current: int, backlog: int, now: float) -> int:
        desired = desired_replicas(backlog, self.replicas)
        if desired >= current:
            self._lower_since = None
            return desired
        if self._lower_since is None:
            self._lower_since = now
        if now - self._lower_since >= self.replicas.idle_seconds:
            self._lower_since = None
            return desired
        return current
