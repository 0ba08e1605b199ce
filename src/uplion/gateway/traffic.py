"""The admin endpoints a rollout drives (admin token): a model's traffic split, and live stats.

``GET|PUT /admin/models/{name}/traffic`` reads or sets which version answers requests that pin
none: the stable one, or a canary for ``weight`` percent of them. A change goes to the gateway's
deployment backend first (kept with the local deployments, or written to the model's AIModel in a
cluster), then to the catalog. ``GET /admin/stats?window=60`` gives each model version's requests,
errors and latency percentiles over the last ``window`` seconds, as this gateway answered them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion import protocol, schemas
from uplion.gateway import errors, stats
from uplion.gateway.admin import admin_only
from uplion.gateway.openai import json_response
from uplion.gateway.state import GatewayState, state_of
from uplion.models.deployment import TrafficSplit

Weight = Annotated[int, msgspec.Meta(ge=0, le=100)]


class CanaryBody(msgspec.Struct, forbid_unknown_fields=True):
    version: str
    weight: Weight


class TrafficBody(msgspec.Struct, forbid_unknown_fields=True):
    """Omitted ``stable``: unchanged; omitted ``canary``: unchanged, unless it becomes stable."""

    stable: str | None = None
    canary: CanaryBody | msgspec.UnsetType | None = msgspec.UNSET


def view(state: GatewayState, name: str) -> dict[str, Any]:
    """A model's split as the API shows it; ``model_not_found`` for an unknown model."""
    split = state.catalog.split(name)
    if split is None:
        raise errors.model_not_found(name)
    return {"model": name, **split.as_json()}


def _changed(current: TrafficSplit, body: TrafficBody) -> TrafficSplit:
    stable = body.stable or current.stable
    if isinstance(body.canary, msgspec.UnsetType):
        canary = None if current.canary == stable else current.canary
        weight = current.weight if canary else 0
    elif body.canary is None:
        canary, weight = None, 0
    else:
        canary, weight = body.canary.version, body.canary.weight
    try:
        return TrafficSplit(stable, canary, weight)
    except ValueError as exc:
        raise errors.invalid_request(str(exc), param="canary", code="invalid_traffic") from None


@admin_only
async def get_traffic(request: Request) -> Response:
    return json_response(view(state_of(request), request.path_params["name"]))


@admin_only
async def set_traffic(request: Request) -> Response:
    state = state_of(request)
    name = request.path_params["name"]
    current = state.catalog.split(name)
    if current is None:
        raise errors.model_not_found(name)
    body = schemas.parse(schemas.decode_body(await request.body()), TrafficBody)
    split = _changed(current, body)
    served = state.catalog.versions(name)
    for param, version in (("stable", split.stable), ("canary.version", split.canary)):
        if version is not None and version not in served:
            raise errors.invalid_request(
                f"The model `{name}` has no version `{version}` to route to (it serves "
                f"{', '.join(served)}).", param=param, code="version_not_found",
            )
    try:
        if state.deployments is not None:
            await state.deployments.set_traffic(name, split)
        state.catalog.set_split(name, split)
    except (LookupError, ValueError) as exc:  # DeploymentConflict, or a version went meanwhile
        raise errors.ApiError(protocol.ErrorInfo(
            str(exc), type="invalid_request_error", code="conflict", status=409
        )) from None
    return json_response(view(state, name))


@admin_only
async def live_stats(request: Request) -> Response:
    raw = request.query_params.get("window", "60")
    try:
        window = int(raw)
        figures = state_of(request).metrics.live.figures(window)
    except ValueError:
        raise errors.invalid_request(
            f"'window' must be a whole number of seconds within 1..{stats.HORIZON_S}, not "
            f"{raw!r}.", param="window",
        ) from None
    return json_response({"object": "list", "window_s": window,
                          "data": [f.as_json() for f in figures]})


ROUTES = [
    Route("/admin/models/{name}/traffic", get_traffic, methods=["GET"]),
    Route("/admin/models/{name}/traffic", set_traffic, methods=["PUT"]),
    Route("/admin/stats", live_stats, methods=["GET"]),
]
