"""The remote ends the fetch tests talk to, on loopback: moto's S3 and a plain HTTP server,
each keeping a log of the requests it answered (so tests count downloads, never time them)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

_WAIT_S = 10.0


class RequestLog:
    """``(method, path)`` of each request, with a way to wait for some to arrive."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._changed = threading.Condition()

    def record(self, method: str, path: str) -> None:
        with self._changed:
            self.requests.append((method, path))
            self._changed.notify_all()

    def count(self, method: str, path: str | None = None) -> int:
        with self._changed:
            return sum(1 for m, p in self.requests if m == method and path in (None, p))

    def wait_for(self, method: str, path: str, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count(method, path) >= count, _WAIT_S)


class S3Server(RequestLog):
    """moto's S3 (its WSGI app, as ``ThreadedMotoServer`` serves it) on a free loopback port,
    behind a middleware that logs each request: ``ThreadedMotoServer`` keeps no such log."""

    def __init__(self) -> None:
        super().__init__()
        app = DomainDispatcherApplication(create_backend_app)

        def logged(environ: dict[str, Any], start_response: Any) -> Any:
            self.record(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, logged, threaded=True,
                                   request_handler=MotoRequestHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.shutdown()
        self._thread.join(_WAIT_S)


@dataclass
class Route:
    body: bytes
    etag: str | None = None
    failures: list[int] = field(default_factory=list)
    """Statuses answered to the next GETs, one each, before the body is served."""
    before_get: Callable[[], object] | None = None


class FileServer(RequestLog):
    """``routes`` (path → ``Route``) over HTTP/1.1 on a free loopback port."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        files = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                path = self.path.partition("?")[0]
                files.record(self.command, path)
                route = files.routes.get(path)
                if route is None:
                    return self._status(404)
                if body and route.failures:
                    return self._status(route.failures.pop(0))
                if body and route.before_get is not None:
                    route.before_get()
                self.send_response(200)
                self.send_header("Content-Length", str(len(route.body)))
                if route.etag is not None:
                    self.send_header("ETag", route.etag)
                try:
                    self.end_headers()
                    if body:
                        self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    """The client is gone (a test killed it)."""

            def _status(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the request log is the test's record."""

        return Handler

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(_WAIT_S)
