"""The gateway as the rollout commands see it: an HTTP client of its API and admin API.

Inference goes out with the API token (the admin token if there is none); the traffic split and
the live stats need the admin token. A gateway that cannot be reached, or that refuses the
token, raises ``Unreachable`` (exit status 2); an admin call it answers with an error raises
``Refused`` (exit status 1). An inference that fails is an ``Answer`` that says why, not an
exception: the smoke test and the evaluation count it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from uplion.rollout.http import HttpServer

VERSION_HEADER = "x-uplion-model-version"
EMBEDDING = "embedding"


class RolloutError(Exception):
    """A step that cannot go on; ``exit_code`` is the command's exit status."""

    exit_code = 1


class Unreachable(RolloutError):
    """No gateway at the URL, or it refused the credentials: the step's setup is wrong."""

    exit_code = 2


class Refused(RolloutError):
    """The gateway refused the change or the question (an unknown model or version, say)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One pinned request's outcome: ``ok`` when it succeeded with a non-empty answer."""

    ok: bool
    status: int
    version: str | None
    latency_ms: float
    detail: str = ""


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


class Gateway(HttpServer):
    """A connection to one gateway; use as ``async with Gateway(...) as gateway``."""

    def __init__(
        self, url: str, *, api_token: str | None = None, admin_token: str | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        super().__init__(url, timeout_s)
        self.api_token = api_token or admin_token
        self.admin_token = admin_token

    async def _send(
        self, method: str, path: str, *, admin: bool = False, inference: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """The gateway's response; ``httpx.TimeoutException`` passes for an inference only."""
        token = self.admin_token if admin else self.api_token
        if not token:
            raise Unreachable(
                "this step needs an admin token (--admin-token or UPLION_ADMIN_TOKEN)" if admin
                else "this step needs an API token (--token or UPLION_API_TOKEN) or an admin one")
        try:
            response = await self._http.request(
                method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
        except httpx.TimeoutException:
            if inference:
                raise
            raise Unreachable(f"the gateway at {self.url} did not answer {method} {path}") from None
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the gateway at {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            role = "admin" if admin else "API"
            raise Unreachable(f"the gateway refused the {role} token: {_message(response)}")
        return response

    async def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._send(method, path, admin=True, **kwargs)
        if response.status_code >= 400:
            raise Refused(f"{method} {path}: {response.status_code} {_message(response)}")
        return response.json()

    async def serves(self, model: str, version: str) -> str:
        """What ``model@version`` answers: ``text-generation`` or ``embedding``."""
        pinned = f"{model}@{version}"
        response = await self._send("GET", f"/v1/models/{pinned}")
        if response.status_code >= 400:
            raise Refused(f"the model {pinned} is not served: {_message(response)}")
        return str(response.json().get("serves", "text-generation"))

    async def infer(self, model: str, version: str, serves: str, text: str) -> Answer:
        """One request pinned to ``model@version``: a chat completion, or an embedding."""
        pinned = f"{model}@{version}"
        body: dict[str, Any]
        if serves == EMBEDDING:
            path, body = "/v1/embeddings", {"model": pinned, "input": text}
        else:
            path, body = "/v1/chat/completions", {
                "model": pinned, "max_tokens": 16,
                "messages": [{"role": "user", "content": text}],
            }
        started = time.perf_counter()
        try:
            response = await self._send("POST", path, inference=True, json=body)
        except httpx.TimeoutException:
            elapsed = (time.perf_counter() - started) * 1000
            return Answer(False, 0, None, elapsed, "no answer before the client's timeout")
        elapsed = (time.perf_counter() - started) * 1000
        answered_by = response.headers.get(VERSION_HEADER)
        if response.status_code != 200:
            return Answer(False, response.status_code, answered_by, elapsed, _message(response))
        empty = _emptiness(response.json(), serves)
        if answered_by is not None and answered_by != version:
            empty = f"answered by version {answered_by}, not {version}"
        return Answer(not empty, 200, answered_by, elapsed, empty)

    async def traffic(self, model: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._admin("GET", f"/admin/models/{model}/traffic")
        return found

    async def set_traffic(self, model: str, change: dict[str, Any]) -> dict[str, Any]:
        changed: dict[str, Any] = await self._admin(
            "PUT", f"/admin/models/{model}/traffic", json=change)
        return changed

    async def stats(self, window_s: int) -> list[dict[str, Any]]:
        found = await self._admin("GET", "/admin/stats", params={"window": str(window_s)})
        return list(found["data"])


def _emptiness(body: Any, serves: str) -> str:
    """Why a 200 answer is empty, or "" when it holds something."""
    try:
        if serves == EMBEDDING:
            vector = body["data"][0]["embedding"]
            return "" if vector else "an empty embedding"
        content = body["choices"][0]["message"]["content"]
        return "" if content and content.strip() else "an empty answer"
    except (KeyError, IndexError, TypeError):
        return "an answer without the expected fields"
