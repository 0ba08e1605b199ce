"""tritonclient's HTTP client against a running uplion, signed in with a bearer token; and the
fixtures of the v2 tests, ``http`` and ``client``, on the ``served`` platform the test
module or its conftest provides."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
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


def connect(served: helpers.Served) -> triton.InferenceServerClient:
    """A client of ``served``'s v2 API with its admin token; close it when done."""
    instance = triton.InferenceServerClient(served.url.removeprefix("http://"))
    instance.register_plugin(BearerToken(served.admin_token or ""))
    return instance


@pytest.fixture
def http(served: helpers.Served) -> Iterator[httpx.Client]:
    """An HTTP client of ``served`` with its admin token."""
    with httpx.Client(base_url=served.url, headers=served.headers, timeout=10) as instance:
        yield instance


@pytest.fixture
def client(served: helpers.Served) -> Iterator[triton.InferenceServerClient]:
    """``connect(served)``, closed after the test."""
    instance = connect(served)
    yield instance
    instance.close()
