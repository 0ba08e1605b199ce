"""The operator's pure decisions: phase, reason, message and conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.operator import examples
from uplion.operator import decide, events

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def deployment(wanted: int, available: int) -> dict[str, Any]:
    return {"spec": {"replicas": wanted}, "status": {"availableReplicas": available}}


def applied(generation: int, at: datetime) -> list[dict[str, Any]]:
    return [{"type": "Applied", "status": "True", "observedGeneration": generation,
             "lastTransitionTime": decide.timestamp(at)}]


def failure(at: datetime) -> dict[str, Any]:
    return events.unrecoverable_event("smollm2-worker-5d9c7-x2bq4", "models", "EngineLoadFailed",
                                      "no such model", now=at)


@pytest.mark.parametrize(("found", "phase", "message"), [
    (deployment(2, 2), "Running", "2 worker(s) available"),
    (deployment(3, 1), "Degraded", "1 of 3 workers available"),
    (deployment(0, 0), "Pending", "scaled to zero"),
    (deployment(2, 0), "Pending", "0 of 2 workers available"),
    (None, "Pending", "the workers' Deployment does not exist yet"),
])
def test_phase_follows_availability(
    found: dict[str, Any] | None, phase: str, message: str
) -> None:
    decision = decide.phase_from(found, [], 1, 1, now=T0)
    assert (decision.phase, decision.message) == (phase, message)
    ready = decision.conditions[0]
    assert ready["type"] == "Ready"
    assert ready["status"] == ("True" if phase in ("Running", "Degraded") else "False")


def test_a_failure_after_the_rollout_fails_the_model() -> None:
    decision = decide.phase_from(deployment(1, 1), [failure(T0 + timedelta(seconds=5))], 1, 1,
                                 previous=applied(1, T0), now=T0 + timedelta(seconds=6))
    assert decision[:3] == ("Failed", "EngineLoadFailed", "no such model")


def test_failures_before_the_current_generation_are_history() -> None:
    decision = decide.phase_from(deployment(1, 1), [failure(T0)], 2, 2,
                                 previous=applied(2, T0 + timedelta(seconds=1)))
    assert decision.phase == "Running"


def test_events_of_other_reasons_are_ignored() -> None:
    event = {**failure(T0 + timedelta(seconds=1)), "reason": "BackOff"}
    decision = decide.phase_from(deployment(1, 1), [event], 1, 1, previous=applied(1, T0))
    assert decision.phase == "Running"


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    first = decide.phase_from(deployment(1, 1), [], 1, 1, now=T0)
    later = decide.phase_from(deployment(2, 2), [], 1, 1, previous=first.conditions,
                              now=T0 + timedelta(minutes=1))
    assert later.conditions == [
        {**first.conditions[0], "message": "2 worker(s) available"}, first.conditions[1]]
    down = decide.phase_from(deployment(1, 0), [], 1, 1, previous=later.conditions,
                             now=T0 + timedelta(minutes=2))
    assert down.conditions[0]["lastTransitionTime"] == decide.timestamp(T0 + timedelta(minutes=2))


def test_a_new_generation_gets_a_new_rollout_time() -> None:
    decision = decide.phase_from(None, [], 2, 2, previous=applied(1, T0), now=T0 + timedelta(1))
    assert decide.applied_at(decision.conditions, 2) == T0 + timedelta(1)


def test_pods_of_the_model_are_recognised() -> None:
    assert decide.owns_pod(examples.LOCAL, "smollm2-worker-5d9c7-x2bq4")
    assert not decide.owns_pod(examples.LOCAL, "smollm2-worker-extra-5d9c7-x2bq4")
    assert not decide.owns_pod(examples.LOCAL, "other-worker-5d9c7-x2bq4")
