"""Who is calling: the API token of a request, checked against the cached principal.

``Authorization: Bearer upl-<id>-<secret>`` (or ``x-api-key``). The principal comes from the
cache by token id; the secret is compared in constant time with the stored hash. Nothing here
touches the database while the cache holds the token, and no token is ever logged.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from uplion import protocol
from uplion.accounts import cache, principal, tokens
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
