"""A worker stand-in for the orphan test: ``python -m tests.engines.server_parent ROOT`` loads an
openai-server engine over the static server of ROOT, prints the server's pid, then waits to be
killed (with no chance to close the engine)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.engines import static_server
from uplion.worker.engines.openai_server import OpenAIServerEngine


async def main(root: Path) -> None:
    engine = OpenAIServerEngine(static_server.command(root), ready_timeout_s=30)
    await engine.load()
    print(engine.pid, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
