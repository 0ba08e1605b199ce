"""Failed authentications are limited per client address, before the token store is asked."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests import helpers
from tests.gateway.test_admission_conformance import Clock
from uplion.accounts import tokens
from uplion.accounts.cache import MemoryPrincipalCache
from uplion.accounts.principal import Principal
from uplion.gateway import errors
from uplion.gateway.admission import MemoryAdmission
from uplion.gateway.auth import Authenticator, FailedAuthLimit, client_address

TOKEN_ID, SECRET, VALID = tokens.new_token()
BODY = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}


def unknown_token(index: int) -> str:
    """Well formed, so only the token store can tell it is unknown."""
    return f"upl-{index:012x}-{'A' * tokens.SECRET_LENGTH}"


class Store:
    """The token store behind the principal cache, counting what it is asked."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    async def load(self, token_id: str) -> Principal | None:
        self.lookups.append(token_id)
        if token_id != TOKEN_ID:
            return None
        return Principal(token_id=TOKEN_ID, token_hash=tokens.hash_secret(SECRET),
                         user_id="user-1", user_name="bob", role="member")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def app(store: Store, clock: Clock) -> Starlette:
    authenticator = Authenticator(MemoryPrincipalCache(store.load))

    async def models(request: Request) -> Response:
        caller = await authenticator.authenticate(request.headers)
        return JSONResponse({"user": caller.user_name})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.ApiError)
        return errors.openai_response(exc.error, exc.headers)

    admission = MemoryAdmission(auth_failures_per_minute=3, clock=clock)
    return Starlette(
        routes=[Route("/v1/models", models), Route("/v2/models/m/infer", models)],
        exception_handlers={errors.ApiError: api_error},
        middleware=[Middleware(FailedAuthLimit, admission=admission)],
    )


@contextlib.asynccontextmanager
async def client_from(app: Starlette, address: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_address_that_keeps_failing_waits_without_asking_the_store(
    app: Starlette, store: Store, clock: Clock
) -> None:
    async with client_from(app, "192.0.2.7") as attacker, client_from(app, "192.0.2.8") as other:
        for index in range(3):
            assert (await attacker.get("/v1/models", headers=bearer(unknown_token(index)))
                    ).status_code == 401
            clock.advance(1_000)
        assert len(store.lookups) == 3
        refused = await attacker.get("/v1/models", headers=bearer(unknown_token(3)))
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "58"
        assert refused.json() == {"error": {
            "message": "Too many failed authentications from 192.0.2.7: at most 3 a minute. "
                       "Retry in 58 s.",
            "type": "requests", "param": None, "code": "too_many_failed_authentications",
        }}
        valid = await attacker.get("/v1/models", headers={"x-api-key": VALID})
        assert valid.status_code == 429  # the address waits, whatever it presents
        v2 = await attacker.post("/v2/models/m/infer", headers=bearer(VALID))
        assert (v2.status_code, v2.json()["error"]) == (429, refused.json()["error"]["message"])
        assert len(store.lookups) == 3  # none of the refused attempts reached the store

        assert (await other.get("/v1/models", headers=bearer(VALID))).json() == {"user": "bob"}
        assert (await other.get("/v1/models", headers=bearer(unknown_token(9)))
                ).status_code == 401
        missing = await attacker.get("/v1/models")  # no credentials: nothing to limit
        assert missing.json()["error"]["code"] == "missing_api_key"

        clock.advance(58_000)
        assert (await attacker.get("/v1/models", headers=bearer(VALID))).status_code == 200


@pytest.mark.parametrize(("host", "counted_as"), [
    ("203.0.113.9", "203.0.113.9"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("::ffff:203.0.113.9", "203.0.113.9"),
    ("testclient", "testclient"),
])
def test_client_addresses(host: str, counted_as: str) -> None:
    assert client_address({"type": "http", "client": (host, 1)}) == counted_as


async def test_ipv6_clients_count_per_64_network(app: Starlette) -> None:
    for index in range(3):
        async with client_from(app, f"2001:db8:0:7::{index + 1}") as client:
            await client.get("/v1/models", headers=bearer(unknown_token(index)))
    async with client_from(app, "2001:db8:0:7:ffff::1") as neighbour:
        refused = await neighbour.get("/v1/models", headers=bearer(VALID))
    assert refused.status_code == 429
    assert "from 2001:db8:0:7::/64" in refused.json()["error"]["message"]


# Through `uplion run`: uvicorn's peer address, X-Forwarded-For only from trusted proxies.

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("failed-auth"),
                          env={"UPLION_AUTH_FAILURES_PER_MINUTE": "4"}) as running:
        yield running


def http_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def test_a_gateway_limits_failures_per_peer_address(served: helpers.Served) -> None:
    url = f"{served.url}/v1/chat/completions"
    with http_from("127.0.0.2") as attacker, http_from("127.0.0.3") as neighbour:
        codes = [attacker.post(url, json=BODY, headers=bearer(unknown_token(i))).status_code
                 for i in range(6)]
        assert codes == [401, 401, 401, 401, 429, 429]
        refused = attacker.post(url, json=BODY, headers=served.headers)
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 61
        assert refused.json()["error"]["code"] == "too_many_failed_authentications"
        assert "from 127.0.0.2: at most 4 a minute" in refused.json()["error"]["message"]
        assert neighbour.post(url, json=BODY, headers=served.headers).status_code == 200


def test_x_forwarded_for_is_not_trusted_by_default(served: helpers.Served) -> None:
    url = f"{served.url}/v1/models"
    with http_from("127.0.0.4") as client:
        codes = [client.get(url, headers={**bearer(unknown_token(i)),
                                          "X-Forwarded-For": f"198.51.100.{i}"}).status_code
                 for i in range(5)]
    assert codes == [401, 401, 401, 401, 429]


def test_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    env = {"UPLION_AUTH_FAILURES_PER_MINUTE": "2", "UPLION_TRUSTED_PROXIES": "127.0.0.5"}
    with helpers.platform(tmp_path, env=env) as running, http_from("127.0.0.5") as proxy:
        url = f"{running.url}/v1/models"

        def through_proxy(client: str, token: str) -> httpx.Response:
            return proxy.get(url, headers={**bearer(token),
                                           "X-Forwarded-For": f"10.9.9.9, {client}"})

        codes = [through_proxy("198.51.100.1", unknown_token(i)).status_code for i in range(3)]
        assert codes == [401, 401, 429]
        assert "from 198.51.100.1:" in through_proxy("198.51.100.1", "x").json()["error"]["message"]
        assert through_proxy("198.51.100.2", running.admin_token or "").status_code == 200


@pytest.mark.redis
def test_gateways_share_the_failures_of_an_address(clean_redis: str, tmp_path: Path) -> None:
    env = {"UPLION_DATA_DIR": str(tmp_path / "data"), "UPLION_REDIS_URL": clean_redis,
           "UPLION_AUTH_FAILURES_PER_MINUTE": "3"}
    admin_token = helpers.bootstrap_store(tmp_path, env)
    with contextlib.ExitStack() as stack:
        first, second = (stack.enter_context(helpers.platform(
            tmp_path, broker_url=clean_redis, command="gateway", env=env)) for _ in range(2))
        attacker, other = stack.enter_context(http_from("127.0.0.6")), stack.enter_context(
            http_from("127.0.0.7"))
        codes = [attacker.get(f"{gateway.url}/v1/models", headers=bearer(unknown_token(i)))
                 .status_code for i, gateway in enumerate((first, second, first))]
        assert codes == [401, 401, 401]
        refused = attacker.get(f"{second.url}/v1/models", headers=bearer(admin_token))
        assert refused.status_code == 429
        assert other.get(f"{second.url}/v1/models",
                         headers=bearer(admin_token)).status_code == 200
