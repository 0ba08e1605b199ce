"""The one door to Redis: the only part of uplion that imports ``redis`` (import-linter holds it).

It owns how uplion talks to Redis, so every component does it the same way: clients built from a
URL with a socket timeout and one retry policy (``clients``), the errors and which of them mean
an outage (``errors``), the backoff of long-running loops (``backoff``), the pub/sub follower that
survives outages (``follower``), stream entries and the claim cursor (``streams``), Lua scripts
kept in ``.lua`` files (``lua``), and stopping tasks that read from Redis (``tasks``). Components
import this package and use its names: ``from uplion import redisio``, then
``redisio.client(url)``.

Public API (stable)::

    # types
    Redis, Pipeline, PubSub, Script
    # clients (socket timeouts from the URL: ?socket_timeout=0.5&socket_connect_timeout=0.5)
    DEFAULT_TIMEOUT_S: float = 5.0
    client(url, *, timeout_s=DEFAULT_TIMEOUT_S, retries=RETRIES, pool_size=None) -> Redis
    blocking_client(url, *, block_s, timeout_s=DEFAULT_TIMEOUT_S) -> Redis
    target(url, timeout_s=DEFAULT_TIMEOUT_S) -> Target  # .url (for redis-py), .timeout_s, ...
    timeout_of(redis) -> float
    async within(seconds, awaitable) -> T                # else Error (a timeout) after seconds
    redacted(url) -> str                                 # no password, no query
    async ping(redis) -> None                            # health check: raises Error
    # errors
    Error, ResponseError; is_outage(error) -> bool; has_code(error, "NOGROUP") -> bool
    # loops
    Backoff(first_s=0.1, max_s=5.0): .delay, .next() -> float, async .wait(), .reset()
    Follower(redis, channel, on_message, *, on_resubscribed=None, ping_every_s=None)
        async .subscribe(); async .follow()  # follow runs until cancelled
    # streams
    Entry(id, fields, deliveries): .field(name) -> bytes | None
    entries(xread_reply) -> list[Entry]; text(bytes | str) -> str
    async create_group(redis, stream, group) -> None
    ClaimCursor(stream, group, consumer, *, idle_s): .due() -> bool, .due_at (loop time),
        async .claim(redis, count) -> Claimed(entries, trimmed)
    # Lua
    source(package, *file_names) -> str; script(redis, package, *file_names) -> Script
    # tasks
    async cancel(*tasks) -> None   # cancel until they end (redis-py may swallow one cancel)
    # the epoch key: did Redis lose its data? (SET uplion:epoch <proposal> NX GET)
    EPOCH_KEY; epoch_proposal() -> str; epoch_answered(previous, proposed) -> str
    Epoch(): .value, .generation, .observe(value) -> bool, async .claim(redis) -> bool
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub

from uplion.backoff import Backoff
from uplion.redisio.clients import (
    DEFAULT_TIMEOUT_S,
    RETRIES,
    Target,
    blocking_client,
    client,
    redacted,
    target,
    timeout_of,
    within,
)
from uplion.redisio.epoch import KEY as EPOCH_KEY
from uplion.redisio.epoch import Epoch
from uplion.redisio.epoch import answered as epoch_answered
from uplion.redisio.epoch import proposal as epoch_proposal
from uplion.redisio.errors import Error, ResponseError, has_code, is_outage
from uplion.redisio.follower import Follower
from uplion.redisio.lua import Script, script, source
from uplion.redisio.streams import ClaimCursor, Claimed, Entry, create_group, entries, text
from uplion.redisio.tasks import cancel

__all__ = [
    "DEFAULT_TIMEOUT_S", "EPOCH_KEY", "RETRIES", "Backoff", "ClaimCursor", "Claimed", "Entry",
    "Epoch", "Error", "Follower", "Pipeline", "PubSub", "Redis", "ResponseError", "Script",
    "Target", "blocking_client", "cancel", "client", "create_group", "entries", "epoch_answered",
    "epoch_proposal", "has_code", "is_outage",
    "ping", "redacted", "script", "source", "target", "text", "timeout_of", "within",
]


async def ping(redis: Redis) -> None:
    """Check that Redis answers (raises ``Error`` otherwise): a health check, a fail-fast start."""
    await redis.ping()
