"""``/metrics`` for Prometheus: on the public port to admin tokens only (the series name every
model and topic, which members may not see), or alone on a port of its own without a token
(``metrics_port``: keep that port off the public network)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion.gateway.metrics import GatewayMetrics
from uplion.gateway.state import state_of

MEDIA_TYPE = "text/plain; version=0.0.4"


async def public_metrics(request: Request) -> Response:
    state = state_of(request)
    await state.auth.admin(request.headers)
    return Response(state.metrics.exposition(), media_type=MEDIA_TYPE)


def metrics_app(metrics: GatewayMetrics) -> Starlette:
    """An app that serves ``metrics`` at ``/metrics`` and nothing else."""

    async def scraped(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=MEDIA_TYPE)

    return Starlette(routes=[Route("/metrics", scraped, methods=["GET"])])
