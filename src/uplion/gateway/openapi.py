"""The gateway's OpenAPI 3.1 document (``GET /openapi.json``), built from the types that validate
the requests: msgspec structs through ``msgspec.json.schema_components``, pydantic models through
``model_json_schema``, so client generators and API fuzzers see what the gateway checks.

Every route's endpoint has its entry in ``OPERATIONS``; ``document`` refuses a route without
one, so the document cannot fall behind what the gateway serves (the web UI, a mount, aside).
Errors are documented as each operation's ``default`` answer, in its API's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

import uplion
from uplion import accounts, schemas
from uplion.gateway import admin, authz, deployments, kserve_v2, openai, scrape, traffic
from uplion.models import deployment

Auth = Literal["none", "token", "admin"]
_JSON = "application/json"
_REF = "#/components/schemas/{name}"
_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    description: str
    type: str = "string"


@dataclass(frozen=True, slots=True)
class Operation:
    """How one endpoint is documented: its answer on success (media types), its body type."""

    summary: str
    tag: str
    auth: Auth = "token"
    body: type | None = None
    status: int = 200
    media: tuple[str, ...] = (_JSON,)
    query: tuple[Query, ...] = ()
    description: str = ""
    answers: dict[int, str] | None = None
    """Other answers that are not errors (a 503 readiness probe, say): status → description."""


async def openapi_json(request: Request) -> Response:
    body: bytes = request.app.state.openapi
    return Response(body, media_type=_JSON)


_STREAM = (_JSON, "text/event-stream")
_READY = {503: "not ready (the same object, with the reason)"}
_USAGE_QUERY = (
    Query("since", "ISO 8601 start (default: 7 days ago)"),
    Query("until", "ISO 8601 end (default: now)"),
    Query("user_id", "only this user"), Query("token_id", "only this token"),
    Query("model", "only this model"),
)

OPERATIONS: dict[Callable[..., Any], Operation] = {
    openai.list_models: Operation("The models this token may use", "OpenAI"),
    openai.retrieve_model: Operation("One model", "OpenAI"),
    openai.chat_completions: Operation(
        "Chat completion", "OpenAI", body=schemas.ChatRequest, media=_STREAM,
        description="With `stream: true` the answer is server-sent events ending with "
        "`data: [DONE]`."),
    openai.completions: Operation(
        "Text completion", "OpenAI", body=schemas.CompletionRequest, media=_STREAM),
    openai.embeddings: Operation("Embeddings", "OpenAI", body=schemas.EmbeddingRequest),
    kserve_v2.server_metadata: Operation("Server metadata", "KServe v2", auth="none"),
    kserve_v2.live: Operation("Liveness", "KServe v2", auth="none"),
    kserve_v2.ready: Operation("Readiness", "KServe v2", auth="none", answers=_READY),
    kserve_v2.model_metadata: Operation("Model metadata", "KServe v2"),
    kserve_v2.model_ready: Operation("Model readiness", "KServe v2", answers=_READY),
    kserve_v2.infer: Operation(
        "Inference", "KServe v2", body=schemas.V2InferRequest,
        media=(_JSON, "application/octet-stream"),
        description="Binary tensors (the binary tensor data extension): send "
        "`Inference-Header-Content-Length` and the JSON header followed by the tensors' bytes."),
    deployments.create: Operation(
        "Deploy a model", "Deployments", auth="admin", body=deployment.DeploymentRequest,
        status=201),
    deployments.list_all: Operation("All deployments", "Deployments", auth="admin"),
    deployments.get_one: Operation("One deployment", "Deployments", auth="admin"),
    deployments.update: Operation(
        "Change a deployment", "Deployments", auth="admin", body=deployment.DeploymentPatch),
    deployments.delete: Operation("Remove a deployment", "Deployments", auth="admin"),
    admin.list_models: Operation("Every model version: health, backlog, traffic", "Admin",
                                 auth="admin"),
    admin.list_users: Operation("Users", "Admin", auth="admin"),
    admin.create_user: Operation("Create a user", "Admin", auth="admin", body=admin.NewUser,
                                 status=201),
    admin.get_user: Operation("One user", "Admin", auth="admin"),
    admin.update_user: Operation("Change a user", "Admin", auth="admin",
                                 body=accounts.UserChanges),
    admin.list_tokens: Operation("Tokens", "Admin", auth="admin",
                                 query=(Query("user_id", "only this user's"),)),
    admin.create_token: Operation("Create a token", "Admin", auth="admin", body=admin.NewToken,
                                  status=201),
    admin.get_token: Operation("One token", "Admin", auth="admin"),
    admin.update_token: Operation("Change a token", "Admin", auth="admin",
                                  body=accounts.TokenChanges),
    admin.revoke_token: Operation("Revoke a token", "Admin", auth="admin"),
    admin.usage: Operation("Usage by user, token and model", "Admin", auth="admin",
                           query=_USAGE_QUERY),
    admin.rebuild_cache: Operation("Rebuild the principal cache", "Admin", auth="admin"),
    traffic.get_traffic: Operation("A model's traffic split", "Admin", auth="admin"),
    traffic.set_traffic: Operation("Set a model's traffic split", "Admin", auth="admin",
                                   body=traffic.TrafficBody),
    traffic.live_stats: Operation(
        "Live figures per model version", "Admin", auth="admin",
        query=(Query("window", "seconds to look back (default 60)", "integer"),)),
    authz.check: Operation(
        "Envoy ext_authz check", "Mesh", media=(), description="200 with `x-uplion-user` "
        "and `x-uplion-token-id` when allowed; the body, if forwarded, may name a `model`."),
    scrape.public_metrics: Operation(
        "Prometheus metrics", "Meta", auth="admin", media=("text/plain",),
        description="Only when the gateway has no metrics port of its own."),
    openapi_json: Operation("This document", "Meta", auth="none"),
}

_ERRORS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]},
                           "code": {"type": ["string", "null"]}},
        }},
    },
    "V2Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "string"}},
    },
}

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_GATEWAY_ONLY = {"V2Tensor": ("raw",)}
"""Fields of a body type that the gateway fills and clients must not send."""


def document(
    routes: Sequence[BaseRoute], operations: dict[Callable[..., Any], Operation] | None = None
) -> dict[str, Any]:
    """The OpenAPI document of ``routes``; ``ValueError`` for a route without an operation."""
    known = OPERATIONS if operations is None else operations
    paths: dict[str, dict[str, Any]] = {}
    bodies: list[type] = []
    for route in routes:
        if isinstance(route, Mount):
            continue
        if not isinstance(route, Route) or route.endpoint not in known:
            path = getattr(route, "path", route)
            raise ValueError(f"route {path} has no OpenAPI operation: add it to OPERATIONS")
        operation = known[route.endpoint]
        if operation.body is not None and operation.body not in bodies:
            bodies.append(operation.body)
        for method in sorted(set(route.methods or ["GET"]) & set(_METHODS)):
            paths.setdefault(route.path_format, {})[method.lower()] = _operation(
                route, method, operation)
    return {
        "openapi": "3.1.0",
        "info": {"title": "uplion", "version": uplion.__version__,
                 "description": "OpenAI and KServe v2 inference, model deployments and "
                 "administration of an uplion gateway."},
        "paths": paths,
        "components": {
            "schemas": {**_body_schemas(bodies), **_ERRORS},
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                          "description": "An uplion API token (upl-...)."}},
        },
    }


def encoded(routes: Sequence[BaseRoute]) -> bytes:
    return msgspec.json.encode(document(routes))


def _operation(route: Route, method: str, operation: Operation) -> dict[str, Any]:
    error = "V2Error" if route.path_format.startswith("/v2") else "OpenAIError"
    success: dict[str, Any] = {"description": operation.summary}
    if operation.media:
        success["content"] = {media: {"schema": _media_schema(media)}
                              for media in operation.media}
    responses: dict[str, Any] = {str(operation.status): success}
    for status, description in (operation.answers or {}).items():
        responses[str(status)] = {"description": description,
                                  "content": {_JSON: {"schema": _OBJECT}}}
    responses["default"] = {
        "description": "An error",
        "content": {_JSON: {"schema": {"$ref": _REF.format(name=error)}}},
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.param_convertors
    ] + [
        {"name": query.name, "in": "query", "required": False, "description": query.description,
         "schema": {"type": query.type}}
        for query in operation.query
    ]
    described: dict[str, Any] = {
        "summary": operation.summary, "tags": [operation.tag],
        "operationId": f"{method.lower()}_{_slug(route.path_format)}",
        "security": [] if operation.auth == "none" else [{"token": []}],
        "responses": responses,
    }
    if operation.description or operation.auth == "admin":
        admin_only = "Needs an admin token. " if operation.auth == "admin" else ""
        described["description"] = admin_only + operation.description
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None and method in ("POST", "PUT", "PATCH"):
        described["requestBody"] = {"required": True, "content": {_JSON: {
            "schema": {"$ref": _REF.format(name=operation.body.__name__)}}}}
    return described


def _media_schema(media: str) -> dict[str, Any]:
    if media == _JSON:
        return _OBJECT
    if media == "application/octet-stream":
        return {"type": "string", "contentMediaType": media}
    return {"type": "string"}


def _slug(path: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in path).strip("_")


def _body_schemas(bodies: list[type]) -> dict[str, Any]:
    """JSON Schemas of the body types and everything they refer to, by name."""
    structs = [body for body in bodies if issubclass(body, msgspec.Struct)]
    _, found = msgspec.json.schema_components(structs, ref_template=_REF)
    components = dict(found)
    for model in bodies:
        if not issubclass(model, pydantic.BaseModel):
            continue
        schema = model.model_json_schema(ref_template=_REF.replace("{name}", "{model}"))
        for name, definition in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            if components.setdefault(name, definition) != definition:
                raise ValueError(f"two body types are named {name} in the OpenAPI document")
    for name, fields in _GATEWAY_ONLY.items():
        for field in fields:
            components[name]["properties"].pop(field, None)
    return components
