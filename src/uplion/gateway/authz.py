"""``/authz/check``: the gateway's authentication and limits as an Envoy ext_authz HTTP service.

Istio's ``CUSTOM`` authorization action (an ``envoyExtAuthzHttp`` extension provider) sends each
request's method, path and headers here, under the ``/authz/check`` prefix, before the mesh lets
it through to its destination. Allowed: 200 with ``x-uplion-user`` and ``x-uplion-token-id`` for
the upstream, and the rate-limit headers. Refused: 401, 403 or 429 with an OpenAI-style body.

Only the request count is limited here (no body, so no token estimate), unless the provider
forwards the body (``includeRequestBodyInCheck``) and it names a model: then the model allow-list
is checked too. The check is charged as one request; there is nothing to settle later.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion import protocol, schemas
from uplion.gateway import auth, errors
from uplion.gateway.state import state_of


async def check(request: Request) -> Response:
    state = state_of(request)
    caller = await state.auth.authenticate(request.headers)
    model = _model_named(await request.body())
    if model is not None:
        route = state.catalog.resolve(model)
        auth.check_model(caller, route.spec.name if route is not None else model)
    request_id = protocol.new_task_id()
    decision = await state.admission.admit(caller, request_id, 0)
    if not decision.allowed:
        raise errors.ApiError(protocol.ErrorInfo(
            decision.message, type="requests", code=decision.code, status=429,
        ), headers=decision.headers)
    headers = {**decision.headers, "x-uplion-user": caller.user_id,
               "x-uplion-token-id": caller.token_id}
    return Response(status_code=200, headers=headers)


def _model_named(body: bytes) -> str | None:
    """The ``model`` a forwarded JSON body names; a body that is not JSON names none (it may be
    a form or a file), one nested too deep is refused (400) as every endpoint refuses it."""
    if not body:
        return None
    try:
        payload = schemas.decode_json(body)
    except msgspec.DecodeError:
        return None
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else None


_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

ROUTES = [
    Route("/authz/check", check, methods=_METHODS),
    Route("/authz/check/{path:path}", check, methods=_METHODS),
]
