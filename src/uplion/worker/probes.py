"""HTTP probes of a worker process for Kubernetes: ``/livez`` and ``/readyz``.

Served on ``UPLION_HEALTH_PORT`` when it is set (the operator's Deployment sets it). Live while the
process's event loop answers; ready once the engine is loaded and while the worker takes tasks
(not failed, not draining). A few lines of asyncio rather than a web server: the probe must not
install signal handlers of its own (SIGTERM belongs to the worker's drain).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_STATUS = {200: b"200 OK", 404: b"404 Not Found", 503: b"503 Service Unavailable"}


async def serve_probes(port: int, is_ready: Callable[[], bool]) -> asyncio.Server:
    """Start answering probes on ``port``; close the returned server to stop."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            parts = request_line.split()
            path = parts[1] if len(parts) >= 2 else b""
            if path == b"/livez":
                status = 200
            elif path == b"/readyz":
                status = 200 if is_ready() else 503
            else:
                status = 404
            body = _STATUS[status]
            writer.write(b"HTTP/1.1 " + _STATUS[status] + b"\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: " + str(len(body)).encode() +
                         b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "0.0.0.0", port)
