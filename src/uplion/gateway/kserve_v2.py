"""The KServe v2 / Open Inference Protocol over REST: health, metadata and inference.

Tensors are JSON (``data``) or binary (the binary tensor data extension, see
``kserve_binary``); the gateway checks each input's data against its shape and datatype, and the
worker checks names, datatypes and shapes against the model's own tensors. Model metadata comes
from what the model's workers report in their heartbeats (from the artifact); before any worker
has reported, text models show their fixed text tensors. Text models take a BYTES input of texts:
generation models answer a BYTES ``text_output``, embedding models an FP32 ``embedding`` of shape
``[n, dim]``, classifiers a BYTES ``label`` and an FP32 ``score``. Errors are
``{"error": "..."}`` as the protocol specifies.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import uplion
from uplion import protocol, schemas
from uplion.accounts.principal import Principal
from uplion.gateway import catalog, edge, errors, estimate, kserve_binary, limits
from uplion.gateway.openai import json_response
from uplion.gateway.state import state_of


async def server_metadata(request: Request) -> Response:
    return json_response({"name": "uplion", "version": uplion.__version__, "extensions": []})


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    is_ready = state_of(request).ready
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


async def _route(request: Request, *, draw: bool) -> tuple[catalog.Route, Principal]:
    """The model the path names, if the caller may use it (404 otherwise, as for unknown).

    ``draw``: an unpinned inference goes to the canary by its weight; metadata and readiness
    describe the model's stable version (what a client gets unless it is drawn)."""
    caller = await state_of(request).auth.authenticate(request.headers)
    name = request.path_params["name"]
    version = request.path_params.get("version")
    routes = state_of(request).catalog
    route = routes.resolve(name, version) if draw else routes.stable(name, version)
    if route is None or not caller.may_use(route.spec.name):
        shown = f"{name} version {version}" if version else name
        raise errors.ApiError(protocol.ErrorInfo(
            f"Model {shown} is not found.", type="invalid_request_error",
            code="model_not_found", status=404,
        ))
    return route, caller


async def model_metadata(request: Request) -> Response:
    route, _ = await _route(request, draw=False)
    state = state_of(request)
    info = state.health.info(route.spec.name, route.spec.version)
    if info is not None:
        platform = info.platform
        inputs = [tensor.as_json() for tensor in info.inputs]
        outputs = [tensor.as_json() for tensor in info.outputs]
    else:
        platform = f"uplion/{route.spec.engine.kind}"
        inputs, outputs = schemas.V2_TEXT_TENSORS.get(route.spec.serves or "", ([], []))
    return json_response({
        "name": route.spec.name, "versions": state.catalog.versions(route.spec.name),
        "platform": platform, "inputs": inputs, "outputs": outputs,
    })


async def model_ready(request: Request) -> Response:
    route, _ = await _route(request, draw=False)
    health = state_of(request).health.of(route.spec.name, route.spec.version)
    return json_response({"name": route.spec.name, "ready": health.ready, "phase": health.phase,
                          "reason": health.reason, "message": health.message},
                         status=200 if health.ready else 503)


async def infer(request: Request) -> Response:
    route, caller = await _route(request, draw=True)
    payload, body = kserve_binary.read_request(
        request.headers.get(kserve_binary.HEADER), await request.body()
    )
    state = state_of(request)
    limits.check_max_tokens(state.health.info(route.spec.name, route.spec.version),
                            route.spec.name, body)
    call = await state.exchange.call(
        route, protocol.Protocol.KSERVE_V2, payload, False, caller,
        estimate.v2_infer(body, route.spec), edge.context_of(request),
    )
    final = await call.result(request)
    usage = final.usage or protocol.Usage()
    envelope = {"model_name": route.spec.name, "model_version": route.spec.version,
                "id": body.id or call.task.id, "parameters": usage.as_openai()}
    return kserve_binary.respond(envelope, (final.data or {}).get("outputs", []), call.headers)


_MODEL = "/v2/models/{name}"
_VERSION = "/v2/models/{name}/versions/{version}"

ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route(_MODEL, model_metadata, methods=["GET"]),
    Route(_VERSION, model_metadata, methods=["GET"]),
    Route(f"{_MODEL}/ready", model_ready, methods=["GET"]),
    Route(f"{_VERSION}/ready", model_ready, methods=["GET"]),
    Route(f"{_MODEL}/infer", infer, methods=["POST"]),
    Route(f"{_VERSION}/infer", infer, methods=["POST"]),
]
