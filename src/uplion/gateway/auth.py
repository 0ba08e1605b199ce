"""Who is calling: the API token of a request, checked against the cached principal.

``Authorization: Bearer upl-<id>-<secret>`` (or ``x-api-key``). The principal comes from the
cache by token id; the secret is compared in constant time with the stored hash. Nothing here
touches the database while the cache holds the token, and no token is ever logged.

Failed authentications are limited per client address (``FailedAuthLimit``): the peer of the
connection, or the client a trusted proxy names in ``X-Forwarded-For`` (uvicorn reads it for the
proxies of ``UPLION_TRUSTED_PROXIES``; by default no proxy is trusted). IPv6 clients count per
/64 network, the block one subscriber usually holds.
"""

from __future__ import annotations

import ipaddress
import math

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from uplion import protocol
from uplion.accounts import cache, principal, tokens
from uplion.gateway import errors
from uplion.gateway.admission import Admission, decide
from uplion.gateway.errors import ApiError

_MISSING = (
    "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY) or in an x-api-key header."
)


def _unauthorized(message: str, code: str = "invalid_api_key") -> ApiError:
    return ApiError(
        protocol.ErrorInfo(message, type="invalid_request_error", code=code, status=401),
        headers={"WWW-Authenticate": 'Bearer realm="uplion"'},
    )


def forbidden(message: str, code: str) -> ApiError:
    return ApiError(protocol.ErrorInfo(message, type="permission_error", code=code, status=403))


def presented_token(headers: Headers) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return headers.get("x-api-key") or None


class Authenticator:
    def __init__(self, principals: cache.PrincipalCache) -> None:
        self.principals = principals

    async def authenticate(self, headers: Headers) -> principal.Principal:
        """The caller's principal, or an ``ApiError`` (401, or 503 when the store is down)."""
        presented = presented_token(headers)
        if presented is None:
            raise _unauthorized(_MISSING, code="missing_api_key")
        parsed = tokens.parse(presented)
        if parsed is None:
            raise _unauthorized(f"Incorrect API key provided: {tokens.redact(presented)}.")
        token_id, secret = parsed
        try:
            found = await self.principals.get(token_id)
        except cache.StoreUnavailable:
            raise ApiError(protocol.ErrorInfo(
                "The account store is unavailable and this API key is not cached; retry shortly.",
                type="server_error", code="account_store_unavailable", status=503,
            )) from None
        if found is None or not tokens.verify(secret, found):
            raise _unauthorized(f"Incorrect API key provided: {tokens.redact(presented)}.")
        if found.revoked:
            raise _unauthorized("This API key has been revoked.", code="api_key_revoked")
        if found.expired():
            raise _unauthorized("This API key has expired.", code="api_key_expired")
        if not found.user_active:
            raise _unauthorized("The user of this API key is disabled.", code="user_disabled")
        return found

    async def admin(self, headers: Headers) -> principal.Principal:
        """The caller's principal if it is an admin; 403 for members."""
        caller = await self.authenticate(headers)
        if caller.role != "admin":
            raise forbidden("This endpoint needs an admin API key.", "insufficient_permissions")
        return caller


def check_model(caller: principal.Principal, model: str) -> None:
    if not caller.may_use(model):
        raise forbidden(
            f"This API key is not allowed to use the model `{model}`.", "model_not_allowed"
        )


class FailedAuthLimit:
    """ASGI middleware: after ``admission.auth_failures_per_minute`` failed authentications in a
    minute, further attempts from that client address get 429 until the oldest failures age out.

    A request that carries credentials (``Authorization`` or ``x-api-key``) from an address that
    must wait is answered at once, before any route (so the token store is not asked); a 401
    (with its ``WWW-Authenticate`` challenge) to a request that carried credentials counts as a
    failure of its address. The counts
    live where the admission keeps its own: in Redis, shared by every gateway, or this process.
    """

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _carries_credentials(scope):
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        wait_s = await self.admission.auth_wait(address)
        if wait_s > 0:
            refusal = _too_many_failures(scope, address, wait_s,
                                         self.admission.auth_failures_per_minute)
            await refusal(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and _refused_credentials(message):
                await self.admission.auth_failed(address)
            await send(message)

        await self.app(scope, receive, counting)


def client_address(scope: Scope) -> str:
    """Whom failed authentications are counted against: the client's address (``scope``'s,
    which uvicorn set from a trusted proxy's ``X-Forwarded-For``), IPv6 per /64 network."""
    client = scope.get("client")
    host = str(client[0]) if client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _carries_credentials(scope: Scope) -> bool:
    return any(name in (b"authorization", b"x-api-key") for name, _value in scope["headers"])


def _refused_credentials(start: Message) -> bool:
    """A 401 with its ``WWW-Authenticate`` challenge: this module's refusal, no other 401."""
    return start["status"] == 401 and any(
        name.lower() == b"www-authenticate" for name, _value in start.get("headers", ()))


def _too_many_failures(scope: Scope, address: str, wait_s: float, per_minute: int) -> Response:
    wait_ms = math.ceil(wait_s * 1000)
    error = protocol.ErrorInfo(
        f"Too many failed authentications from {address}: at most {per_minute} a minute. "
        f"Retry in {decide.in_words(wait_ms)}.",
        type="requests", code="too_many_failed_authentications", status=429,
    )
    return errors.respond(scope["path"], error, {"Retry-After": decide.retry_after(wait_ms)})
