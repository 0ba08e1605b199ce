"""The operator's Prometheus metrics: the phase of every AIModel it watches.

Fed by an event handler on AIModels (``handlers.aimodel_seen``), so the figures follow the
status the operator wrote, including one set by another replica before a restart. Labels:
the AIModel's namespace and name (bounded by the AIModels there are) and its phase.
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Gauge

from uplion.models import resource

PHASES: tuple[str, ...] = get_args(resource.Phase)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.phase = Gauge(
            "uplion_operator_aimodel_phase", "1 for the phase in an AIModel's status "
            "(Pending, Running, Degraded, Failed), 0 for the others.",
            ["namespace", "aimodel", "phase"], registry=self.registry,
        )

    def show(self, namespace: str, name: str, phase: str | None) -> None:
        """Set the phase of AIModel ``namespace/name``; ``None``: it is gone."""
        for known in PHASES:
            if phase is None:
                self.phase.remove(namespace, name, known)
            else:
                self.phase.labels(namespace, name, known).set(1 if known == phase else 0)
