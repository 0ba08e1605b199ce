"""``https://`` and ``http://``: one file, or an archive the fetcher unpacks (``archives``).

A HEAD tells versions apart: its ETag, else its Last-Modified; without either (or when the
server refuses HEAD, as presigned GET URLs do) the URI alone names the cache entry. httpx logs
each request's URL at INFO: a filter on its logger hides query strings, where presigned URLs
keep their signatures.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path, PurePosixPath

import httpx

from uplion.fetch import archives, transfer
from uplion.fetch.errors import FetchError, TransientError
from uplion.fetch.plan import Kind, Plan
from uplion.fetch.retry import retrying
from uplion.fetch.sources import Source, redact
from uplion.models.spec import FetchSpec

_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
_CHUNK = 1 << 20


class _HideQueries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_HideQueries())


def plan(source: Source, options: FetchSpec) -> Plan:
    name = PurePosixPath(urllib.parse.unquote(source.path)).name or source.authority
    identity = retrying(lambda: _head(source))
    kind: Kind = "archive" if archives.is_archive(name) else "file"
    return Plan(identity, name, kind, lambda path: retrying(lambda: _get(source, path)))


def _client() -> httpx.Client:
    return httpx.Client(timeout=_TIMEOUT, follow_redirects=True)


def _unreachable(source: Source, error: httpx.TransportError) -> TransientError:
    return TransientError(f"{source.shown}: {type(error).__name__} {error}".rstrip())


def _head(source: Source) -> str:
    try:
        with _client() as client:
            response = client.head(source.uri)
    except httpx.TransportError as error:
        raise _unreachable(source, error) from None
    if response.status_code in (404, 410) or response.status_code >= 500:
        _raise_for(source, response.status_code)
    if not response.is_success:
        return ""
    return response.headers.get("etag") or response.headers.get("last-modified") or ""


def _get(source: Source, path: Path) -> dict[str, str]:
    try:
        with _client() as client, client.stream("GET", source.uri) as response:
            _raise_for(source, response.status_code)
            length = response.headers.get("content-length")
            progress = transfer.Progress(
                source.shown, 1, int(length) if length and length.isdigit() else None
            )
            digest = transfer.write_stream(response.iter_bytes(_CHUNK), path, progress)
    except httpx.TransportError as error:
        raise _unreachable(source, error) from None
    progress.file_done()
    progress.finish()
    return {path.name: digest}


def _raise_for(source: Source, status: int) -> None:
    if status < 400:
        return
    if status in (404, 410):
        raise FetchError("SourceNotFound", f"{source.shown}: the server answered {status}")
    if status in (401, 403):
        raise FetchError("AccessDenied", f"{source.shown}: the server answered {status}")
    if status >= 500 or status == 429:
        raise TransientError(f"{source.shown}: the server answered {status}")
    raise FetchError("FetchFailed", f"{source.shown}: the server answered {status}")
