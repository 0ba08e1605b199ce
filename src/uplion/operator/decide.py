"""Pure decisions of the operator: an AIModel's phase from its Deployment and its workers' Events.

- Failed: a worker reported an unrecoverable error (an Event with reason ``UplionUnrecoverable``)
  at or after the current generation was applied. Failures of earlier generations are history:
  once the object is fixed (a new generation is applied) the phase follows availability again.
- Running: at least one worker is available and no fewer than the Deployment wants.
- Degraded: some, but fewer than wanted, are available.
- Pending: none available; "scaled to zero" when none are wanted.

Conditions follow Kubernetes' convention: ``Ready`` (True while workers serve) and ``Applied``,
whose ``lastTransitionTime`` is when the operator applied ``observedGeneration``: the instant
that separates a generation's failures from the ones before it. A condition keeps its
``lastTransitionTime`` while its status does not change. A GPU model whose image looks like the
CPU variant also gets ``CudaImage`` False (``uplion.operator.images.cuda_warning``): a warning,
its phase unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from uplion.models import resource
from uplion.operator import manifests

UNRECOVERABLE = "UplionUnrecoverable"
REASON_ANNOTATION = "uplion.ai/reason"
"""The worker's own reason for an unrecoverable failure, kept on its Event."""

_POD_SUFFIX = re.compile(r"^[a-z0-9]+-[a-z0-9]+$")


class Decision(NamedTuple):
    phase: resource.Phase
    reason: str | None
    message: str | None
    conditions: list[dict[str, Any]]


def timestamp(moment: datetime) -> str:
    """RFC 3339 with microseconds, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def event_time(event: Mapping[str, Any]) -> datetime | None:
    """When an Event last happened (``eventTime`` is the precise one)."""
    for value in (event.get("eventTime"), event.get("lastTimestamp"),
                  event.get("firstTimestamp"), event.get("metadata", {}).get("creationTimestamp")):
        moment = parse_time(value)
        if moment is not None:
            return moment
    return None


def owns_pod(aimodel: Mapping[str, Any], pod_name: str) -> bool:
    """Whether a pod belongs to one of the AIModel's Deployments (``<deployment>-<rs>-<pod>``)."""
    spec = aimodel.get("spec") or {}
    tracks: tuple[manifests.Track, ...] = (
        ("stable", "canary") if spec.get("canary") else ("stable",)
    )
    for track in tracks:
        prefix = manifests.workload_name(aimodel, track) + "-"
        if pod_name.startswith(prefix) and _POD_SUFFIX.match(pod_name[len(prefix):]):
            return True
    return False


def applied_at(conditions: Sequence[Mapping[str, Any]], generation: int | None) -> datetime | None:
    """When ``generation`` was applied, from the ``Applied`` condition."""
    for condition in conditions:
        if condition.get("type") == "Applied" and condition.get("observedGeneration") == generation:
            return parse_time(condition.get("lastTransitionTime"))
    return None


def _condition(
    previous: Sequence[Mapping[str, Any]], type_: str, status: str, reason: str,
    message: str | None, now: datetime, generation: int | None,
) -> dict[str, Any]:
    before = next((c for c in previous if c.get("type") == type_), None)
    since = (before.get("lastTransitionTime") if before and before.get("status") == status
             else None)
    return {
        "type": type_, "status": status, "reason": reason, "message": message or "",
        "lastTransitionTime": since or timestamp(now), "observedGeneration": generation,
    }


def _availability(deployment: Mapping[str, Any] | None) -> tuple[resource.Phase, str, str]:
    if deployment is None:
        return "Pending", "NoDeployment", "the workers' Deployment does not exist yet"
    wanted = int((deployment.get("spec") or {}).get("replicas") or 0)
    available = int((deployment.get("status") or {}).get("availableReplicas") or 0)
    if available >= 1 and available >= wanted:
        return "Running", "WorkersAvailable", f"{available} worker(s) available"
    if available >= 1:
        return "Degraded", "WorkersUnavailable", f"{available} of {wanted} workers available"
    if wanted == 0:
        return "Pending", "ScaledToZero", "scaled to zero"
    return "Pending", "WorkersStarting", f"0 of {wanted} workers available"


def phase_from(
    deployment: Mapping[str, Any] | None,
    events: Sequence[Mapping[str, Any]],
    generation: int | None,
    observed_generation: int | None,
    previous: Sequence[Mapping[str, Any]] = (),
    now: datetime | None = None,
    image_warning: str | None = None,
) -> Decision:
    """The phase, reason, message and conditions of an AIModel.

    ``deployment``: its stable Deployment (None when absent); ``events``: its workers' Events;
    ``generation``: the AIModel's; ``observed_generation``: the one the operator has applied;
    ``previous``: the conditions in its status now; ``image_warning``: what is wrong with its
    image, if anything (the ``CudaImage`` condition)."""
    now = now or datetime.now(UTC)
    since = applied_at(previous, observed_generation) or now
    current = generation == observed_generation
    applied = {
        "type": "Applied", "status": "True" if current else "False",
        "reason": "Applied" if current else "Pending",
        "message": f"generation {observed_generation} applied"
        + ("" if current else f"; generation {generation} not yet"),
        "lastTransitionTime": timestamp(since), "observedGeneration": observed_generation,
    }
    failures = [
        (moment, event) for event in events if event.get("reason") == UNRECOVERABLE
        for moment in [event_time(event)] if moment is not None and moment >= since
    ]
    if failures:
        _, latest = max(failures, key=lambda pair: pair[0])
        phase: resource.Phase = "Failed"
        reason = (latest.get("metadata", {}).get("annotations") or {}).get(
            REASON_ANNOTATION, UNRECOVERABLE)
        message = str(latest.get("message") or "a worker failed")
    else:
        phase, reason, message = _availability(deployment)
    ready = "True" if phase in ("Running", "Degraded") else "False"
    conditions = [_condition(previous, "Ready", ready, reason, message, now, observed_generation),
                  applied]
    if image_warning is not None:
        conditions.append(_condition(previous, "CudaImage", "False", "ImageWithoutCuda",
                                     image_warning, now, observed_generation))
    return Decision(phase, reason, message, conditions)


def failed_spec(
    error: Exception, generation: int | None, now: datetime | None = None,
    reason: str = "InvalidSpec",
) -> Decision:
    """The decision for a spec the operator cannot build objects from (``reason``: why, e.g.
    ``NoGpuImage``)."""
    message = str(error)
    condition = {
        "type": "Ready", "status": "False", "reason": reason, "message": message,
        "lastTransitionTime": timestamp(now or datetime.now(UTC)),
        "observedGeneration": generation,
    }
    return Decision("Failed", reason, message, [condition])


def status_of(decision: Decision, deployment: Mapping[str, Any] | None,
              observed_generation: int | None) -> dict[str, Any]:
    """The AIModel status fields for a decision."""
    available = int(((deployment or {}).get("status") or {}).get("availableReplicas") or 0)
    return {
        "phase": decision.phase, "reason": decision.reason, "message": decision.message,
        "conditions": decision.conditions, "replicas": available,
        "observedGeneration": observed_generation,
    }
