"""The commands that Argo Workflow steps run during a model rollout: smoke test, evaluate, set
the canary's weight, promote, roll back. Each is a client of a gateway's HTTP API."""

from uplion.rollout.evaluate import Gates, Verdict, evaluate, judge, judge_figures
from uplion.rollout.gateway import Answer, Gateway, Refused, RolloutError, Unreachable
from uplion.rollout.prometheus import Prometheus
from uplion.rollout.smoke import SmokeReport, pinned_requests, smoke
from uplion.rollout.traffic import describe, promote, rollback, set_weight

__all__ = [
    "Answer",
    "Gates",
    "Gateway",
    "Prometheus",
    "Refused",
    "RolloutError",
    "SmokeReport",
    "Unreachable",
    "Verdict",
    "describe",
    "evaluate",
    "judge",
    "judge_figures",
    "pinned_requests",
    "promote",
    "rollback",
    "set_weight",
    "smoke",
]
