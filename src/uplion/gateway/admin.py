"""The admin REST API under ``/admin``: users, tokens, limits, quotas and usage (admin token).

Every change goes through ``AccountService``, which commits to the database and writes the
affected principals through to the cache, so every gateway sees it within a second.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion import protocol, schemas
from uplion.accounts import (
    AccountsError,
    Conflict,
    Invalid,
    NotFound,
    Quota,
    RateLimits,
    StoreUnavailable,
    TokenChanges,
    UserChanges,
)
from uplion.accounts.principal import Role
from uplion.billing import usage_report
from uplion.gateway import errors
from uplion.gateway.state import state_of
from uplion.models.deployment import TrafficSplit

_encode = msgspec.json.Encoder().encode
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


ModelNames = Annotated[list[schemas.Name], msgspec.Meta(max_length=1024)]
Days = Annotated[float, msgspec.Meta(gt=0, le=36500)]


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    name: schemas.Name
    role: Role = "member"
    allowed_models: ModelNames | None = None
    limits: RateLimits = RateLimits()
    quota: Quota | None = None


class NewToken(msgspec.Struct, forbid_unknown_fields=True):
    user_id: schemas.Name
    name: schemas.Name = "default"
    expires_at: datetime | None = None
    expires_in_days: Days | None = None
    allowed_models: ModelNames | None = None
    limits: RateLimits = RateLimits()
    quota: Quota | None = None


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


async def _body(request: Request, schema: type[T]) -> T:
    return schemas.parse(schemas.decode_body(await request.body()), schema)


def admin_only(handler: Handler) -> Handler:
    """Require an admin token; map account errors to HTTP statuses."""

    async def guarded(request: Request) -> Response:
        await state_of(request).auth.admin(request.headers)
        try:
            return await handler(request)
        except NotFound as exc:
            raise _error(str(exc), "not_found", 404) from None
        except Conflict as exc:
            raise _error(str(exc), "conflict", 409) from None
        except Invalid as exc:
            raise _error(str(exc), "invalid_value", 400) from None
        except AccountsError as exc:
            raise _error(str(exc), None, 400) from None
        except StoreUnavailable as exc:
            raise errors.ApiError(protocol.ErrorInfo(
                str(exc), type="server_error", code="account_store_unavailable", status=503
            )) from None

    return guarded


def _error(message: str, code: str | None, status: int) -> errors.ApiError:
    return errors.ApiError(protocol.ErrorInfo(
        message, type="invalid_request_error", code=code, status=status
    ))


@admin_only
async def list_users(request: Request) -> Response:
    users = await state_of(request).accounts.list_users()
    return _json({"object": "list", "data": users})


@admin_only
async def create_user(request: Request) -> Response:
    body = await _body(request, NewUser)
    user = await state_of(request).accounts.create_user(
        body.name, body.role, allowed_models=body.allowed_models, limits=body.limits,
        quota=body.quota,
    )
    return _json(user, 201)


@admin_only
async def get_user(request: Request) -> Response:
    return _json(await state_of(request).accounts.get_user(request.path_params["user_id"]))


@admin_only
async def update_user(request: Request) -> Response:
    changes = await _body(request, UserChanges)
    user_id = request.path_params["user_id"]
    return _json(await state_of(request).accounts.update_user(user_id, changes))


@admin_only
async def list_tokens(request: Request) -> Response:
    tokens = await state_of(request).accounts.list_tokens(request.query_params.get("user_id"))
    return _json({"object": "list", "data": tokens})


@admin_only
async def create_token(request: Request) -> Response:
    body = await _body(request, NewToken)
    expires_at = body.expires_at
    if body.expires_in_days is not None:
        expires_at = datetime.now(UTC) + timedelta(days=body.expires_in_days)
    token = await state_of(request).accounts.create_token(
        body.user_id, body.name, expires_at=expires_at, allowed_models=body.allowed_models,
        limits=body.limits, quota=body.quota,
    )
    return _json(token, 201)


@admin_only
async def get_token(request: Request) -> Response:
    return _json(await state_of(request).accounts.get_token(request.path_params["token_id"]))


@admin_only
async def update_token(request: Request) -> Response:
    changes = await _body(request, TokenChanges)
    token_id = request.path_params["token_id"]
    return _json(await state_of(request).accounts.update_token(token_id, changes))


@admin_only
async def revoke_token(request: Request) -> Response:
    return _json(await state_of(request).accounts.revoke_token(request.path_params["token_id"]))


@admin_only
async def usage(request: Request) -> Response:
    query = request.query_params
    now = datetime.now(UTC)
    since = _moment(query.get("since"), "since") or now - timedelta(days=7)
    until = _moment(query.get("until"), "until") or now
    rows = await usage_report(
        state_of(request).database, since, until, user_id=query.get("user_id"),
        token_id=query.get("token_id"), model=query.get("model"),
    )
    return _json({"object": "list", "since": since, "until": until, "data": rows})


@admin_only
async def list_models(request: Request) -> Response:
    """Every model version: its health, replicas, backlog and its model's traffic split."""
    state = state_of(request)
    data = []
    for route in state.catalog.routes():
        backlog = await state.broker.backlog(route.topic, protocol.WORKER_GROUP)
        data.append({
            "name": route.spec.name, "version": route.spec.version, "topic": route.topic,
            "serves": state.serves_of(route.spec), "engine": route.spec.engine.kind,
            "replicas": {"min": route.spec.replicas.min, "max": route.spec.replicas.max},
            "backlog": {"waiting": backlog.waiting, "in_flight": backlog.in_flight},
            "status": state.status_of(route.spec),
            "traffic": _traffic(state.catalog.split(route.spec.name), route.spec.name),
        })
    return _json({"object": "list", "data": data})


def _traffic(split: TrafficSplit | None, name: str) -> dict[str, Any] | None:
    return None if split is None else {"model": name, **split.as_json()}


@admin_only
async def rebuild_cache(request: Request) -> Response:
    count = await state_of(request).accounts.rebuild_cache()
    return _json({"tokens": count})


def _moment(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise errors.invalid_request(
            f"'{name}' must be an ISO 8601 date or time, e.g. 2026-01-31T12:00:00Z", param=name
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


ROUTES = [
    Route("/admin/models", list_models, methods=["GET"]),
    Route("/admin/users", list_users, methods=["GET"]),
    Route("/admin/users", create_user, methods=["POST"]),
    Route("/admin/users/{user_id}", get_user, methods=["GET"]),
    Route("/admin/users/{user_id}", update_user, methods=["PATCH"]),
    Route("/admin/tokens", list_tokens, methods=["GET"]),
    Route("/admin/tokens", create_token, methods=["POST"]),
    Route("/admin/tokens/{token_id}", get_token, methods=["GET"]),
    Route("/admin/tokens/{token_id}", update_token, methods=["PATCH"]),
    Route("/admin/tokens/{token_id}", revoke_token, methods=["DELETE"]),
    Route("/admin/tokens/{token_id}/revoke", revoke_token, methods=["POST"]),
    Route("/admin/usage", usage, methods=["GET"]),
    Route("/admin/cache/rebuild", rebuild_cache, methods=["POST"]),
]
