"""Stream entries as read, and the claim cursor: taking over what a dead reader left pending.

Every consumer group of uplion (a topic's workers, the usage stream's aggregators) reads new
entries with XREADGROUP and, every so often, claims the entries another reader left idle for
longer than a visibility timeout (XAUTOCLAIM). ``ClaimCursor`` is that walk: it scans the whole
pending list once per half timeout (a partial scan goes on at the next call), says how many
claimed entries Redis had trimmed meanwhile, and tells each claimed entry's delivery count.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from uplion.redisio import errors

__all__ = ["ClaimCursor", "Claimed", "Entry", "create_group", "entries", "text"]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _raw(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Entry:
    """A stream entry: its id, its fields (names and values as bytes) and, for an entry read in
    a group, how many times it was delivered (1: first delivery)."""

    id: str
    fields: Mapping[bytes, bytes] = field(default_factory=dict)
    deliveries: int = 1

    def field(self, name: bytes) -> bytes | None:
        return self.fields.get(name)


def _entry(raw_id: bytes | str, fields: Mapping[Any, Any] | None, deliveries: int = 1) -> Entry:
    decoded = {_raw(k): _raw(v) for k, v in (fields or {}).items()}
    return Entry(text(raw_id), decoded, deliveries)


def entries(response: object) -> list[Entry]:
    """The entries of an XREAD/XREADGROUP reply (every stream of it, in order)."""
    found: list[Entry] = []
    for _stream, raw in cast(list[list[Any]], response or []):
        for raw_id, fields in raw:
            if raw_id is not None:
                found.append(_entry(raw_id, fields))
    return found


async def create_group(redis: Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` from its first entry (and the stream) unless it exists."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except errors.ResponseError as error:
        if not errors.has_code(error, "BUSYGROUP"):
            raise


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim took over (with delivery counts), and how many pending entries it found
    trimmed away (deleted before anyone answered them)."""

    entries: Sequence[Entry]
    trimmed: int


class ClaimCursor:
    """One reader's walk over its group's pending entries (XAUTOCLAIM), see the module docstring.

    ``due()`` says whether a claim should run now (``due_at``: when); ``claim`` runs one step
    and creates the group when it does not exist (then it claims nothing).
    """

    def __init__(self, stream: str, group: str, consumer: str, *, idle_s: float) -> None:
        if idle_s <= 0:
            raise ValueError("the visibility timeout must be positive")
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._idle_ms = math.ceil(idle_s * 1000)
        self._idle_s = idle_s
        self._from = "0-0"
        self._next = 0.0

    @property
    def due_at(self) -> float:
        """When (event loop time) the next claim should run."""
        return self._next

    def due(self) -> bool:
        return asyncio.get_running_loop().time() >= self._next

    async def claim(self, redis: Redis, count: int) -> Claimed:
        try:
            next_from, raw, *deleted = await redis.xautoclaim(
                self._stream, self._group, self._consumer, min_idle_time=self._idle_ms,
                start_id=self._from, count=count,
            )
        except errors.ResponseError as error:
            if not errors.has_code(error, "NOGROUP"):
                raise
            await create_group(redis, self._stream, self._group)
            return Claimed((), 0)
        self._from = text(next_from)
        finished = self._from == "0-0"
        now = asyncio.get_running_loop().time()
        self._next = now + self._idle_s / 2 if finished else now
        claimed = [(raw_id, fields) for raw_id, fields in raw if raw_id is not None]
        counts = await self._deliveries(redis, [text(raw_id) for raw_id, _ in claimed])
        found = [_entry(raw_id, fields, deliveries)
                 for (raw_id, fields), deliveries in zip(claimed, counts, strict=True)]
        return Claimed(found, len(deleted[0]) if deleted and deleted[0] else 0)

    async def _deliveries(self, redis: Redis, ids: list[str]) -> list[int]:
        """How many times each of ``ids`` was delivered (XAUTOCLAIM counted this claim)."""
        if not ids:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(self._stream, self._group, entry_id, entry_id, 1)
            replies = await pipe.execute()
        return [int(reply[0]["times_delivered"]) if reply else 1 for reply in replies]
