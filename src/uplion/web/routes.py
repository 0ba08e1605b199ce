"""The ``/ui`` mount: the chat page, the admin dashboard and their static files.

The pages are read from package data once, when the mount is built; the static files are served
by Starlette's ``StaticFiles`` from the package (ETags, ranges, 304s).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from uplion.web.security import SecurityHeaders

PAGES = ("chat", "admin")


def mount(path: str = "/ui") -> Mount:
    """The routes under ``path``: ``/chat``, ``/admin``, ``/static/...``; ``/`` leads to chat."""
    routes: list[BaseRoute] = [Route("/", _to_chat, methods=["GET"])]
    routes += [Route(f"/{name}", _page(name), methods=["GET"], name=name) for name in PAGES]
    routes.append(Mount("/static", app=StaticFiles(packages=[("uplion.web", "static")])))
    return Mount(path, app=SecurityHeaders(Router(routes)), name="ui")


def _page(name: str) -> Callable[[Request], Awaitable[Response]]:
    html = (resources.files("uplion.web") / "pages" / f"{name}.html").read_text("utf-8")

    async def page(request: Request) -> Response:
        return HTMLResponse(html)

    return page


async def _to_chat(request: Request) -> Response:
    return RedirectResponse(request.url.replace(path=request.url.path.rstrip("/") + "/chat"))
