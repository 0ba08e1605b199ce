"""The operator's metrics: the phase its AIModel events carry, under the names the alert rules
read (the Prometheus test cannot run an operator; this one checks the names instead)."""

from __future__ import annotations

import re

import kopf
from prometheus_client import generate_latest

from tests.monitoring import promtool
from uplion.operator import handlers
from uplion.operator.metrics import OperatorMetrics


def _aimodel(phase: str | None) -> kopf.Body:
    raw = {"apiVersion": "uplion.ai/v1alpha1", "kind": "AIModel",
           "metadata": {"namespace": "models", "name": "chat"},
           "status": {"phase": phase} if phase else {}}
    return kopf.Body(raw)


async def test_an_aimodels_phase_is_shown_and_forgotten() -> None:
    metrics = OperatorMetrics()
    memo = kopf.Memo(metrics=metrics)
    await handlers.aimodel_seen(body=_aimodel("Failed"), type="MODIFIED", memo=memo)
    text = generate_latest(metrics.registry).decode()
    assert ('uplion_operator_aimodel_phase{aimodel="chat",namespace="models",phase="Failed"} 1.0'
            in text)
    assert ('uplion_operator_aimodel_phase{aimodel="chat",namespace="models",phase="Running"} 0.0'
            in text)
    used = set(re.findall(r"uplion_operator_\w+", promtool.RULES.read_text()))
    assert used == {"uplion_operator_aimodel_phase"}
    assert all(name in text for name in used)

    await handlers.aimodel_seen(body=_aimodel(None), type="MODIFIED", memo=memo)  # no status yet
    assert 'phase="Failed"} 1.0' in generate_latest(metrics.registry).decode()
    await handlers.aimodel_seen(body=_aimodel("Running"), type="DELETED", memo=memo)
    assert "uplion_operator_aimodel_phase{" not in generate_latest(metrics.registry).decode()

