"""What the rollout steps' HTTP clients share: one ``httpx`` client per server, closed on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx


class HttpServer:
    """One server's HTTP client; use as ``async with Subclass(url, ...) as server``."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self._http.aclose()
