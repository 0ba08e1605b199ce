"""HTTP probes of a worker process for Kubernetes: ``/livez`` and ``/readyz``, and ``/metrics``.

Served on ``UPLION_HEALTH_PORT`` when it is set (the operator's Deployment sets it). Live while the
process's event loop answers; ready once the engine is loaded and while the worker takes tasks
(not failed, not draining). ``/metrics`` is the worker's Prometheus exposition (``metrics``),
scraped by the chart's PodMonitor. A few lines of asyncio rather than a web server: the probe
must not install signal handlers of its own (SIGTERM belongs to the worker's drain).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uplion.worker.metrics import WorkerMetrics

_STATUS = {200: b"200 OK", 404: b"404 Not Found", 503: b"503 Service Unavailable"}
_TEXT = b"text/plain"
_EXPOSITION = b"text/plain; version=0.0.4; charset=utf-8"


async def serve_probes(
    port: int, is_ready: Callable[[], bool], metrics: WorkerMetrics | None = None
) -> asyncio.Server:
    """Start answering probes (and scrapes of ``metrics``) on ``port``; close the returned
    server to stop."""

    def respond(path: bytes) -> tuple[int, bytes, bytes]:
        """The status, content type and body that answer a GET of ``path``."""
        if path == b"/metrics" and metrics is not None:
            return 200, _EXPOSITION, metrics.exposition()
        if path == b"/livez":
            status = 200
        elif path == b"/readyz":
            status = 200 if is_ready() else 503
        else:
            status = 404
        return status, _TEXT, _STATUS[status]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            parts = request_line.split()
            status, kind, body = respond(parts[1] if len(parts) >= 2 else b"")
            writer.write(b"HTTP/1.1 " + _STATUS[status] + b"\r\nContent-Type: " + kind +
                         b"\r\nContent-Length: " + str(len(body)).encode() +
                         b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "0.0.0.0", port)
