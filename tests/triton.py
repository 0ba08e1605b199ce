"""tritonclient's HTTP client against a running uplion, signed in with a bearer token."""

from __future__ import annotations

import tritonclient.http as triton
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient._request import Request

from tests import helpers


class BearerToken(InferenceServerClientPlugin):  # type: ignore[misc]
    """Adds ``Authorization: Bearer <token>`` to every request the client sends."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: Request) -> None:
        request.headers["Authorization"] = f"Bearer {self.token}"


def client(served: helpers.Served) -> triton.InferenceServerClient:
    """A client of ``served``'s v2 API with its admin token; close it when done."""
    instance = triton.InferenceServerClient(served.url.removeprefix("http://"))
    instance.register_plugin(BearerToken(served.admin_token or ""))
    return instance
