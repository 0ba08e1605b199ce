"""Lua scripts, kept in ``.lua`` files next to the code that runs them (package data).

``source(package, *names)`` reads and joins files (a shared function file first, then the
script's body); ``script(redis, package, *names)`` registers the result on a client: it runs by
EVALSHA and is loaded again by itself when Redis lost it (a restart), in pipelines too.
"""

from __future__ import annotations

import functools
import importlib.resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript as Script

__all__ = ["Script", "script", "source"]


@functools.cache
def source(package: str, *names: str) -> str:
    """The files ``names`` of ``package`` (``"uplion.broker.redis_streams"``), joined in order."""
    folder = importlib.resources.files(package)
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


def script(redis: Redis, package: str, *names: str) -> Script:
    """``source(package, *names)`` registered on ``redis``; call it with ``keys`` and ``args``."""
    return redis.register_script(source(package, *names))
