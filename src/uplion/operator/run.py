"""Running the operator: kopf's loop with uplion's handlers (``uplion operator``)."""

from __future__ import annotations

import asyncio

import kopf
import prometheus_client

from uplion.operator import handlers
from uplion.operator.images import WorkerImages
from uplion.operator.metrics import OperatorMetrics


async def operate(
    namespace: str | None,
    registry: kopf.OperatorRegistry | None = None,
    memo: kopf.Memo | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """kopf's loop in this event loop: every namespace when ``namespace`` is None."""
    await kopf.operator(
        registry=registry or handlers.build_registry(),
        standalone=True,
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else [],
        memo=memo or kopf.Memo(),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def run_operator(
    namespace: str | None, metrics_port: int | None = None,
    images: WorkerImages | None = None,
) -> None:
    """Run the operator until it is stopped (SIGINT/SIGTERM); with ``metrics_port``, serve its
    Prometheus metrics there. ``images``: what AIModels naming no image run (the CUDA one for
    GPU models)."""
    memo = kopf.Memo(images=images or WorkerImages())
    if metrics_port is not None:
        metrics = memo["metrics"] = OperatorMetrics()
        prometheus_client.start_http_server(metrics_port, registry=metrics.registry)
    asyncio.run(operate(namespace, memo=memo))
