"""The gateway's edge middleware on a small app of its own: whatever escapes a handler is a JSON
500 in the API's error shape that names the request id, which the log names with the cause."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uplion.gateway import edge, errors, sse
from uplion.gateway.admission import Admission, MemoryAdmission, RedisAdmission


async def fail(request: Request) -> Response:
    raise RuntimeError("the cause of it all")


async def hold_then_fail(request: Request) -> Response:
    await edge.context_of(request).hold_stream("token-a", 60)
    raise RuntimeError("failed while holding a stream")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[Route("/v1/chat/completions", fail, methods=["POST"]),
                Route("/v2/models/{name}/infer", fail, methods=["POST"]),
                Route("/admin/users", fail), Route("/v1/held", hold_then_fail)],
        middleware=[Middleware(edge.Edge, streams=sse.StreamSlots(1, MemoryAdmission()))],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as instance:
        yield instance


async def test_a_failure_is_a_json_500_naming_the_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="uplion.gateway.edge"):
        response = await client.post("/v1/chat/completions", json={})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    request_id = response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert request_id in error["message"]
    [record] = caplog.records
    assert request_id in record.getMessage()
    assert "POST /v1/chat/completions" in record.getMessage()
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "the cause of it all"


async def test_v2_failures_have_the_v2_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/models/m/infer", json={})
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"error"}
    assert response.headers["x-request-id"] in body["error"]


async def test_other_json_apis_have_the_openai_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/users")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"


async def test_what_a_request_held_is_released_when_it_fails(client: httpx.AsyncClient) -> None:
    for _ in range(3):  # with a cap of one stream, a leaked slot would make the next one 429
        response = await client.get("/v1/held")
        assert response.status_code == 500


MakeStore = Callable[..., Admission]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """Where stream slots are counted: this process, or a Redis every gateway shares."""
    made: list[Admission] = []

    def make(clock: Callable[[], int] | None = None) -> Admission:
        store: Admission = (
            MemoryAdmission(clock=clock) if request.param == "memory"
            else RedisAdmission(request.getfixturevalue("clean_redis"), clock=clock))
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def test_stream_slots_count_per_token_across_gateways(make_store: MakeStore) -> None:
    """Two gateways on one store share each token's cap."""
    store = make_store()
    one, other = sse.StreamSlots(2, store), sse.StreamSlots(2, store)
    release_a1 = await one.hold("a", 60)
    release_a2 = await other.hold("a", 60)
    await one.hold("b", 60)
    for gateway in (one, other):
        with pytest.raises(errors.ApiError, match="2 streams") as refused:
            await gateway.hold("a", 60)
        assert refused.value.error.status == 429
        assert refused.value.error.code == "too_many_streams"
    release_a1()
    release_a1()  # releasing twice frees one slot only
    await one.settled()
    await other.hold("a", 60)
    with pytest.raises(errors.ApiError, match="2 streams"):
        await one.hold("a", 60)
    release_a2()
    await other.settled()
    await one.hold("a", 60)


async def test_a_stream_nobody_closed_stops_counting_when_its_lease_ends(
    make_store: MakeStore,
) -> None:
    """A gateway that died holding a slot: the lease ends it (the store's clock moves on)."""
    now = [1_000_000]
    slots = sse.StreamSlots(1, make_store(clock=lambda: now[0]))
    await slots.hold("a", 30)  # never released
    with pytest.raises(errors.ApiError, match="1 stream"):
        await slots.hold("a", 30)
    now[0] += 30_000
    await slots.hold("a", 30)
