"""The gateway's ASGI app, built by a factory: routes, error rendering, metrics and lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion import billing, broker, protocol, schemas, web
from uplion.accounts import AccountService, Database, PrincipalCache
from uplion.gateway import admin, authz, errors, kserve_v2, openai, traffic
from uplion.gateway import deployments as deployment_api
from uplion.gateway.admission import Admission, AdmissionUnavailable
from uplion.gateway.auth import Authenticator
from uplion.gateway.catalog import Catalog
from uplion.gateway.exchange import ClientGone, Exchange
from uplion.gateway.health import HealthBoard
from uplion.gateway.metrics import GatewayMetrics
from uplion.gateway.relay import Relay
from uplion.gateway.state import GatewayState, state_of
from uplion.models.deployment import DeploymentBackend

log = logging.getLogger(__name__)

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(
    source: broker.Broker, catalog: Catalog, *, principals: PrincipalCache,
    admission: Admission, usage: billing.UsageStream, accounts: AccountService,
    database: Database, deployments: DeploymentBackend | None = None,
    lifespan: Lifespan | None = None,
) -> Starlette:
    """The gateway app. ``lifespan`` (if any) runs around the gateway's own start-up and must
    start the broker and the stores it was given (and local workers, if any)."""
    relay = Relay(source)
    metrics = GatewayMetrics()
    board = HealthBoard()
    exchange = Exchange(relay, metrics, admission, usage, board)
    state = GatewayState(
        broker=source, catalog=catalog, relay=relay, metrics=metrics, exchange=exchange,
        auth=Authenticator(principals), admission=admission, accounts=accounts,
        database=database, health=board, deployments=deployments,
    )

    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if lifespan is not None:
                await stack.enter_async_context(lifespan(app))
            await relay.start()
            await source.subscribe_status(board.record)
            state.ready = True
            log.info("gateway ready: reply address %s, models %s", relay.address, catalog.names())
            yield
            state.ready = False
            await exchange.drain()

    app = Starlette(
        routes=[*openai.ROUTES, *kserve_v2.ROUTES, *admin.ROUTES, *authz.ROUTES,
                *deployment_api.ROUTES, *traffic.ROUTES,
                Route("/metrics", metrics_endpoint), web.mount()],
        exception_handlers={
            errors.ApiError: _api_error,
            schemas.InvalidRequest: _invalid_request,
            ClientGone: _client_gone,
            AdmissionUnavailable: _admission_unavailable,
            HTTPException: _http_error,
        },
        lifespan=run,
    )
    app.state.uplion = state
    return app


async def metrics_endpoint(request: Request) -> Response:
    state = state_of(request)
    for route in state.catalog.routes():
        backlog = await state.broker.backlog(route.topic, protocol.WORKER_GROUP)
        state.metrics.backlog.labels(route.topic, "waiting").set(backlog.waiting)
        state.metrics.backlog.labels(route.topic, "in_flight").set(backlog.in_flight)
    return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4")


def _render(request: Request, error: protocol.ErrorInfo, headers: dict[str, str]) -> Response:
    if request.url.path.startswith("/v2"):
        return errors.v2_response(error, headers)
    return errors.openai_response(error, headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ApiError)
    return _render(request, exc.error, exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, schemas.InvalidRequest)
    return _render(request, protocol.ErrorInfo(
        exc.message, type="invalid_request_error", param=exc.param, status=400
    ), {})


async def _admission_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("rate limits unavailable: %s", exc)
    return _render(request, protocol.ErrorInfo(
        "Rate limiting is unavailable right now; retry shortly.", type="server_error",
        code="rate_limiter_unavailable", status=503,
    ), {"Retry-After": "1"})


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
        code = "unknown_url"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
        code = "method_not_allowed"
    else:
        message, code = str(exc.detail), None
    error = protocol.ErrorInfo(
        message, type="invalid_request_error", code=code, status=exc.status_code
    )
    return _render(request, error, dict(exc.headers or {}))
