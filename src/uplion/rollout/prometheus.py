"""The live figures of a model version over every gateway, from Prometheus (``uplion rollout
evaluate --prometheus URL``), instead of one gateway's ``/admin/stats``.

Counts are exact over the window, not extrapolated: each series' value now less its value a
window ago (0 for a series born since, e.g. a version's first request), and a series that went
down (a gateway restarted) counts nothing rather than a negative. Errors are 5xx answers, timeouts
(504) included, as the gateway's stats count them; latencies come from
``uplion_request_duration_seconds``' buckets, so a p95 is as fine as those buckets.

One Prometheus scrapes every environment's gateways (the same model and version can run in
staging and production at once): ``match`` adds label matchers to every selector, e.g.
``namespace="uplion-staging"``, so that a gate judges one environment's traffic only.
"""

from __future__ import annotations

import math
import re
from typing import Any

import httpx

from uplion.rollout.gateway import Refused, Unreachable
from uplion.rollout.http import HttpServer

REQUESTS = "uplion_requests_total"
BUCKETS = "uplion_request_duration_seconds_bucket"
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
_MATCHERS = re.compile(f"(?:{_MATCHER})(?:,(?:{_MATCHER}))*")


def matchers(match: str) -> str:
    """``match`` (``label="value"``, comma-separated) as a selector's tail; a clear error when it
    is not PromQL label matchers."""
    if not match.strip():
        return ""
    if not _MATCHERS.fullmatch(match):
        raise ValueError(f"--prometheus-match {match!r}: expected PromQL label matchers such as "
                         'namespace="uplion-staging" (comma-separated, values in double quotes)')
    return "," + ",".join(found.group(0).strip() for found in re.finditer(_MATCHER, match))


def _selector(metric: str, model: str, version: str, extra: str = "", scope: str = "") -> str:
    return f'{metric}{{model="{_quoted(model)}",version="{_quoted(version)}"{extra}{scope}}}'


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _grown(selector: str, window_s: int) -> str:
    """Per series: how much ``selector`` grew over the window (see the module docstring)."""
    return f"clamp_min({selector} - ({selector} offset {window_s}s or {selector} * 0), 0)"


def queries(model: str, version: str, window_s: int, match: str = "") -> dict[str, str]:
    """The PromQL of each figure of ``model@version`` over the last ``window_s`` seconds, of the
    series ``match`` selects (see ``matchers``)."""
    scope = matchers(match)
    requests = _selector(REQUESTS, model, version, scope=scope)
    errors = _selector(REQUESTS, model, version, ',status=~"5.."', scope)
    buckets = _selector(BUCKETS, model, version, scope=scope)
    spread = f"sum by (le) ({_grown(buckets, window_s)})"
    return {
        "requests": f"sum({_grown(requests, window_s)})",
        "errors": f"sum({_grown(errors, window_s)})",
        "p50_ms": f"histogram_quantile(0.5, {spread}) * 1000",
        "p95_ms": f"histogram_quantile(0.95, {spread}) * 1000",
    }


class Prometheus(HttpServer):
    """A Prometheus server's query API; use as ``async with Prometheus(url) as prometheus``."""

    def __init__(self, url: str, timeout_s: float = 30.0, match: str = "") -> None:
        matchers(match)  # refused here, before any query
        super().__init__(url, timeout_s)
        self.match = match

    async def value(self, query: str) -> float | None:
        """The single value ``query`` answers now; ``None`` when it answers nothing or NaN."""
        try:
            response = await self._http.get("/api/v1/query", params={"query": query})
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot query Prometheus at {self.url}: {exc}") from None
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            raise Unreachable(f"{self.url} answered {response.status_code} without JSON: is it "
                              "Prometheus?") from None
        if body.get("status") != "success":
            raise Refused(f"Prometheus refused {query!r}: {body.get('error', response.text)}")
        result = body["data"]["result"]
        if not result:
            return None
        found = float(result[0]["value"][1])
        return None if math.isnan(found) else found

    async def figures(self, model: str, version: str, window_s: int) -> dict[str, Any]:
        """``model@version``'s figures over every gateway, shaped as ``/admin/stats``'
        entries (``requests``, ``errors``, ``error_rate``, ``requests_per_s``, ``p50_ms``,
        ``p95_ms``)."""
        found = {name: await self.value(query)
                 for name, query in queries(model, version, window_s, self.match).items()}
        requests = round(found["requests"] or 0)
        errors = round(found["errors"] or 0)
        return {
            "requests": requests, "errors": errors,
            "error_rate": errors / requests if requests else 0.0,
            "requests_per_s": requests / window_s,
            "p50_ms": found["p50_ms"] if requests else None,
            "p95_ms": found["p95_ms"] if requests else None,
        }
