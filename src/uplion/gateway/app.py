"""The gateway's ASGI app, built by a factory: routes, middleware, error rendering, metrics and
lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion import billing, broker, config, protocol, redisio, schemas, web
from uplion.accounts import AccountService, Database, PrincipalCache
from uplion.gateway import (
    admin,
    authz,
    edge,
    errors,
    kserve_v2,
    limits,
    openai,
    openapi,
    scrape,
    sse,
    traffic,
)
from uplion.gateway import deployments as deployment_api
from uplion.gateway import metrics as metrics_
from uplion.gateway.admission import Admission, AdmissionUnavailable
from uplion.gateway.auth import Authenticator, FailedAuthLimit
from uplion.gateway.catalog import Catalog
from uplion.gateway.exchange import ClientGone, Exchange
from uplion.gateway.health import HealthBoard
from uplion.gateway.metrics import GatewayMetrics
from uplion.gateway.relay import Relay
from uplion.gateway.state import GatewayState
from uplion.models.deployment import DeploymentBackend

log = logging.getLogger(__name__)

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(
    source: broker.Broker, catalog: Catalog, *, principals: PrincipalCache,
    admission: Admission, usage: billing.UsageStream, accounts: AccountService,
    database: Database, deployments: DeploymentBackend | None = None,
    lifespan: Lifespan | None = None, settings: config.Settings | None = None,
) -> Starlette:
    """The gateway app. ``lifespan`` (if any) runs around the gateway's own start-up and must
    start the broker and the stores it was given (and local workers, if any). ``settings``
    (default: from the environment) give the limits and where metrics are served."""
    settings = config.Settings() if settings is None else settings
    bounds = limits.Limits.from_settings(settings)
    relay = Relay(source)
    metrics = GatewayMetrics()
    board = HealthBoard()
    metrics.watch_models(board, catalog)
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
            await _first_backlog(metrics, source, catalog)
            backlog = asyncio.create_task(metrics_.follow_backlog(
                metrics, source, catalog, settings.metrics_refresh_s), name="backlog-metrics")
            stack.push_async_callback(_stop, backlog)
            probing = asyncio.create_task(metrics_.follow_replies(
                metrics, relay, settings.metrics_refresh_s), name="reply-probe")
            stack.push_async_callback(_stop, probing)
            expiring = asyncio.create_task(exchange.ledger.expire_held(), name="expire-held")
            stack.push_async_callback(_stop, expiring)
            state.ready = True
            log.info("gateway ready: reply address %s, models %s", relay.address, catalog.names())
            yield
            state.ready = False
            await exchange.drain()

    routes = [*openai.ROUTES, *kserve_v2.ROUTES, *admin.ROUTES, *authz.ROUTES,
              *deployment_api.ROUTES, *traffic.ROUTES,
              Route("/openapi.json", openapi.openapi_json, methods=["GET"]), web.mount()]
    if settings.metrics_port is None:  # else metrics_app(app) serves them on their own port
        routes.append(Route("/metrics", scrape.public_metrics, methods=["GET"]))
    app = Starlette(
        routes=routes,
        exception_handlers={
            errors.ApiError: _api_error,
            schemas.InvalidRequest: _invalid_request,
            ClientGone: _client_gone,
            AdmissionUnavailable: _admission_unavailable,
            HTTPException: _http_error,
        },
        middleware=[
            Middleware(edge.Edge, streams=sse.StreamSlots(bounds.streams_per_token, admission)),
            Middleware(limits.BodyLimit, limits=bounds),
            Middleware(FailedAuthLimit, admission=admission),
        ],
        lifespan=run,
    )
    app.state.uplion = state
    app.state.openapi = openapi.encoded(routes)
    return app


def metrics_app(app: Starlette) -> Starlette:
    """The app that serves the metrics of the gateway ``app`` on a port of their own."""
    state: GatewayState = app.state.uplion
    return scrape.metrics_app(state.metrics)


async def _first_backlog(
    metrics: GatewayMetrics, source: broker.Broker, catalog: Catalog
) -> None:
    """Read the backlog once before the gateway is ready; a broker that cannot answer yet
    leaves it to the refresh that follows."""
    try:
        async with asyncio.timeout(metrics_.READ_TIMEOUT_S):
            await metrics_.refresh_backlog(metrics, source, catalog)
    except Exception as exc:
        log.warning("cannot read the topics' backlog for /metrics yet: %s", exc)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a loop that reads from the broker or Redis and wait until it ended
    (``redisio.cancel``: redis-py may swallow one cancellation)."""
    await redisio.cancel(task)


def _render(request: Request, error: protocol.ErrorInfo, headers: dict[str, str]) -> Response:
    return errors.respond(request.url.path, error, headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ApiError)
    return _render(request, exc.error, exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, schemas.InvalidRequest)
    return _render(request, protocol.ErrorInfo(
        exc.message, type="invalid_request_error", param=exc.param, status=400
    ), {})


async def _admission_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("request %s: rate limits unavailable: %s", edge.context_of(request).id, exc)
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
