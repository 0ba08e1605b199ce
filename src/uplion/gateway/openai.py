"""The OpenAI API: models, chat completions (with SSE streaming), completions, embeddings.

Bodies are validated against ``uplion.schemas`` (a bad field is a 400 naming it), become a task on
the model's topic, and the worker's chunks are wrapped in OpenAI's envelopes here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion import protocol, schemas
from uplion.gateway import auth, catalog, edge, errors, estimate, limits, sse
from uplion.gateway.exchange import Call
from uplion.gateway.state import GatewayState, state_of
from uplion.models import ModelSpec

_encode = msgspec.json.Encoder().encode
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STREAM_LEASE_MARGIN_S = 5.0
"""A stream's slot outlives its deadline by this much (the last chunks, the client's report)
before a gateway that died without giving it back stops counting against the token's cap."""


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encode(body), status_code=status, headers=headers,
                    media_type="application/json")


async def list_models(request: Request) -> Response:
    state = state_of(request)
    caller = await state.auth.authenticate(request.headers)
    data = [_model_object(state, route) for route in state.catalog.routes()
            if route.spec.version == state.catalog.versions(route.spec.name)[0]
            and caller.may_use(route.spec.name)]
    return json_response({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    state = state_of(request)
    caller = await state.auth.authenticate(request.headers)
    model = request.path_params["model"]
    route = state.catalog.stable(model)
    if route is None or not caller.may_use(route.spec.name):
        raise errors.model_not_found(model)
    return json_response(_model_object(state, route))


def _model_object(state: GatewayState, route: catalog.Route) -> dict[str, Any]:
    """OpenAI's model object, plus uplion's ``serves`` and ``status`` (phase, replicas, reason)."""
    return {"id": route.spec.name, "object": "model", "created": state.started,
            "owned_by": route.spec.owned_by, "serves": state.serves_of(route.spec),
            "status": state.status_of(route.spec)}


async def _open(
    request: Request, kind: protocol.Protocol, schema: type[Any], serves: str,
    estimator: Callable[[Any, ModelSpec], estimate.Estimate],
) -> tuple[Call, Any]:
    state = state_of(request)
    caller = await state.auth.authenticate(request.headers)
    payload = schemas.decode_body(await request.body())
    body = schemas.parse(payload, schema)
    route = state.catalog.resolve(body.model)
    if route is None:
        raise errors.model_not_found(body.model)
    auth.check_model(caller, route.spec.name)
    served = state.serves_of(route.spec)
    if served is not None and served != serves:  # None: no worker has said yet; it will refuse
        raise errors.invalid_request(
            f"The model `{body.model}` serves {served}, not {serves}.",
            param="model", code="model_not_supported",
        )
    limits.check_max_tokens(state.health.info(route.spec.name, route.spec.version), body.model,
                            body)
    if getattr(body, "stream", False):
        await edge.context_of(request).hold_stream(
            caller.token_id, route.spec.request_timeout_s + STREAM_LEASE_MARGIN_S)
    call = await state.exchange.call(
        route, kind, payload, bool(getattr(body, "stream", False)), caller,
        estimator(body, route.spec), edge.context_of(request),
    )
    return call, body


async def chat_completions(request: Request) -> Response | sse.EventStream:
    call, body = await _open(
        request, protocol.Protocol.OPENAI_CHAT, schemas.ChatRequest, "text-generation",
        estimate.chat,
    )
    return await _respond(request, call, body, "chatcmpl", "chat.completion")


async def completions(request: Request) -> Response | sse.EventStream:
    call, body = await _open(
        request, protocol.Protocol.OPENAI_COMPLETION, schemas.CompletionRequest, "text-generation",
        estimate.completion,
    )
    return await _respond(request, call, body, "cmpl", "text_completion")


async def embeddings(request: Request) -> Response:
    call, body = await _open(
        request, protocol.Protocol.OPENAI_EMBEDDING, schemas.EmbeddingRequest, "embedding",
        estimate.embedding,
    )
    final = await call.result(request)
    usage = final.usage or protocol.Usage()
    return json_response({
        "object": "list", "data": (final.data or {}).get("data", []), "model": body.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
    }, headers=call.headers)


async def _respond(
    request: Request, call: Call, body: Any, id_prefix: str, obj: str
) -> Response | sse.EventStream:
    envelope = {"id": f"{id_prefix}-{call.task.id}", "created": int(call.task.created),
                "model": body.model, "system_fingerprint": None}
    if not body.stream:
        final = await call.result(request)
        usage = (final.usage or protocol.Usage()).as_openai()
        return json_response(
            {**envelope, "object": obj, **(final.data or {}), "usage": usage}, headers=call.headers
        )
    # The first chunk decides the status: an error or a timeout before any output is a plain
    # HTTP error, not a stream.
    first = await call.first(request)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunk_object = "chat.completion.chunk" if obj == "chat.completion" else obj
    events = _sse(call, first, {**envelope, "object": chunk_object}, include_usage)
    return sse.EventStream(events, {**_SSE_HEADERS, **call.headers}, deadline=call.task.deadline)


async def _sse(
    call: Call, first: protocol.Chunk, envelope: dict[str, Any], include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """The answer's events; those of chunks that arrived together go out in one write."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    chunk: protocol.Chunk | None = first
    stream = call.stream()
    events = bytearray()
    try:
        while chunk is not None:
            if chunk.data:
                events += _event({**envelope, **chunk.data, **extra})
            if chunk.terminal:
                if include_usage:
                    usage = (chunk.usage or protocol.Usage()).as_openai()
                    events += _event({**envelope, "choices": [], "usage": usage})
                break
            if events and not call.ready:
                yield bytes(events)
                events.clear()
            chunk = await anext(stream, None)
    except errors.ApiError as exc:
        events += _event(errors.openai_body(exc.error))
    finally:
        await stream.aclose()
    yield bytes(events) + sse.DONE


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + _encode(body) + b"\n\n"


ROUTES = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
