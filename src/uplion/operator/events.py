"""The worker's side of failure reporting: a Kubernetes Event saying it cannot go on.

A worker that hits an unrecoverable error calls ``report_unrecoverable`` before it exits
non-zero. The Event (reason ``UplionUnrecoverable``, type Warning) involves the worker's pod
(``POD_NAME``, and ``POD_NAMESPACE`` or the service account's namespace); the operator reads it
and sets the AIModel's phase to Failed. The worker's own reason travels in the annotation
``uplion.ai/reason``. Outside a cluster (no ``POD_NAME`` or no service account) it does nothing.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime

from uplion.operator import decide, kube

log = logging.getLogger(__name__)

COMPONENT = "uplion-worker"


def unrecoverable_event(
    pod: str, namespace: str, reason: str, message: str, now: datetime | None = None
) -> dict[str, object]:
    """The core/v1 Event a worker posts about itself."""
    moment = now or datetime.now(UTC)
    second = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {
            "name": f"{pod}.{uuid.uuid4().hex[:16]}",
            "namespace": namespace,
            "annotations": {decide.REASON_ANNOTATION: reason},
        },
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod,
                           "namespace": namespace},
        "reason": decide.UNRECOVERABLE,
        "message": message,
        "type": "Warning",
        "count": 1,
        "firstTimestamp": second,
        "lastTimestamp": second,
        "eventTime": decide.timestamp(moment),
        "action": "Exit",
        "reportingComponent": COMPONENT,
        "reportingInstance": pod,
        "source": {"component": COMPONENT},
    }


async def report_unrecoverable(
    reason: str, message: str, client: kube.Kube | None = None
) -> bool:
    """Post the Event; False (and nothing posted) outside a cluster or when the API refuses.

    ``client``: a connection to use (tests); by default one to this pod's API server."""
    pod = os.environ.get("POD_NAME")
    namespace = kube.pod_namespace()
    if not pod or not namespace or (client is None and not kube.in_cluster()):
        return False
    own = client is None
    connection = client or await kube.Kube.connect()
    try:
        await connection.create_event(unrecoverable_event(pod, namespace, reason, message))
    except kube.ApiError as error:
        log.error("could not report the failure to Kubernetes: %s", error)
        return False
    finally:
        if own:
            await connection.close()
    return True
