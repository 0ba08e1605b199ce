"""A static OpenAI-shaped server for the openai-server tests: the standard library's HTTP server
over a folder whose ``v1/models`` file lists the models.

Run as ``python static_server.py HOST PORT ROOT [STATUS]``; a STATUS other than 200 answers every
request with it (a server refusing the key). It logs each request to stderr, as servers do.
"""

from __future__ import annotations

import functools
import http.server
import json
import sys
from pathlib import Path
from typing import Any


def write_root(root: Path, models: list[dict[str, Any]]) -> Path:
    """A folder to serve, whose ``/v1/models`` lists ``models``."""
    (root / "v1").mkdir(parents=True, exist_ok=True)
    (root / "v1" / "models").write_text(json.dumps({"object": "list", "data": models}))
    return root


def command(root: Path, status: int = 200) -> list[str]:
    """The command line of this server over ``root``, with the engine's placeholders."""
    return [sys.executable, "-u", str(Path(__file__)), "{host}", "{port}", str(root), str(status)]


def main(argv: list[str]) -> None:
    host, port, root, status = argv[1], int(argv[2]), argv[3], int(argv[4])

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if status != 200:
                self.send_error(status)
                return
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        (host, port), functools.partial(Handler, directory=root)
    )
    print(f"serving {root} on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
