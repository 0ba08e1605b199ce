"""``/v1/modelDeployment``: create, read, change and delete model deployments (admin token).

The API is the same everywhere; what a deployment becomes depends on the backend the gateway is
given: worker replicas of the local runtime on one machine, ``AIModel`` objects in a cluster.
Answers carry the model's live status and the URLs to call it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion import protocol, schemas
from uplion.gateway import errors
from uplion.gateway.admin import admin_only
from uplion.gateway.openai import json_response
from uplion.gateway.state import state_of
from uplion.models.deployment import (
    Deployment,
    DeploymentBackend,
    DeploymentConflict,
    DeploymentNotFound,
    DeploymentPatch,
    DeploymentRequest,
    KeySourceRefused,
    check_key_sources,
)

T = TypeVar("T", bound=pydantic.BaseModel)


def _backend(request: Request) -> DeploymentBackend:
    backend = state_of(request).deployments
    if backend is None:
        raise errors.ApiError(protocol.ErrorInfo(
            "This gateway has no deployment backend.", type="invalid_request_error",
            code="deployments_unavailable", status=501,
        ))
    return backend


_STATES = {"Pending": "pending", "Running": "active", "Degraded": "active", "Failed": "failed"}


def _view(request: Request, deployment: Deployment) -> dict[str, Any]:
    """The deployment as accepted, its live status and where to call it. ``state`` is the
    status in one word (``pending``, ``active``, ``failed`` with ``reason``), as that payload's
    users expect; ``status`` has the details."""
    state = state_of(request)
    spec = deployment.request.spec()
    health = state.health.of(spec.name, spec.version)
    body = deployment.request.model_dump(mode="json")
    v2 = f"/v2/models/{spec.name}/versions/{spec.version}/infer"
    serves = state.serves_of(spec)
    endpoints = {"v2_infer": v2}
    if serves in ("text-generation", None):  # None: not known until a worker has loaded it
        endpoints |= {"chat_completions": "/v1/chat/completions",
                      "completions": "/v1/completions"}
    if serves in ("embedding", None):
        endpoints["embeddings"] = "/v1/embeddings"
    reason = None
    if health.phase == "Failed":
        reason = f"{health.reason}: {health.message}" if health.message else health.reason
    return {
        "id": deployment.id, "object": "model.deployment", "name": spec.name,
        "version": spec.version, "model": f"{spec.name}@{spec.version}", **body,
        "state": _STATES[health.phase], "reason": reason, "status": state.status_of(spec),
        "predict_url": f"{str(request.base_url).rstrip('/')}/v2/models/{spec.name}/infer",
        "endpoints": endpoints,
        "created_at": deployment.created_at.isoformat(),
        "updated_at": deployment.updated_at.isoformat(),
    }


async def _parse(request: Request, schema: type[T]) -> T:
    payload = schemas.decode_body(await request.body())
    try:
        return schema.model_validate(payload)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise errors.invalid_request(
            f"Invalid value for '{param}': {first['msg']}" if param else first["msg"], param
        ) from None


def _guarded(handler: Any) -> Any:
    async def call(request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except DeploymentNotFound as exc:
            raise errors.ApiError(protocol.ErrorInfo(
                str(exc), type="invalid_request_error", code="deployment_not_found", status=404
            )) from None
        except DeploymentConflict as exc:
            raise errors.ApiError(protocol.ErrorInfo(
                str(exc), type="invalid_request_error", code="conflict", status=409
            )) from None
        except ValueError as exc:  # the backend refused the model (unknown engine, option)
            raise errors.invalid_request(str(exc), param="model.engine") from None
        return response

    return admin_only(call)


@_guarded
async def create(request: Request) -> Response:
    body = await _parse(request, DeploymentRequest)
    try:
        check_key_sources(body.model)
    except KeySourceRefused as refused:
        raise errors.invalid_request(str(refused), refused.param) from None
    if (body.type == "gpu") != (body.gpus > 0):
        raise errors.invalid_request(
            "A deployment of type gpu needs `gpus` of at least 1 (GPUs per replica)."
            if body.type == "gpu" else "`gpus` is for deployments of type gpu; set `type`.",
            param="gpus")
    deployment = await _backend(request).create(body)
    return json_response(_view(request, deployment), status=201)


@_guarded
async def list_all(request: Request) -> Response:
    deployments = await _backend(request).list()
    return json_response({"object": "list", "data": [_view(request, d) for d in deployments]})


@_guarded
async def get_one(request: Request) -> Response:
    deployment = await _backend(request).get(request.path_params["deployment_id"])
    return json_response(_view(request, deployment))


@_guarded
async def update(request: Request) -> Response:
    patch = await _parse(request, DeploymentPatch)
    deployment = await _backend(request).update(request.path_params["deployment_id"], patch)
    return json_response(_view(request, deployment))


@_guarded
async def delete(request: Request) -> Response:
    deployment_id = request.path_params["deployment_id"]
    await _backend(request).delete(deployment_id)
    return json_response({"id": deployment_id, "object": "model.deployment", "deleted": True})


ROUTES = [
    Route("/v1/modelDeployment", create, methods=["POST"]),
    Route("/v1/modelDeployment", list_all, methods=["GET"]),
    Route("/v1/modelDeployment/{deployment_id}", get_one, methods=["GET"]),
    Route("/v1/modelDeployment/{deployment_id}", update, methods=["PATCH"]),
    Route("/v1/modelDeployment/{deployment_id}", delete, methods=["DELETE"]),
]
