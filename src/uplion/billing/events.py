"""The usage event: what the gateway reports about every finished request, and its encoding.

One event per request, whatever its outcome; its id is the request's id, so an event delivered
twice (a producer retry, a redelivery after an aggregator died) is recognised and counted once.
Fields are bounded on decode (lengths as the database columns, no negative counts): an entry that
does not fit is refused at the door instead of failing a database write over and over.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

ID_LENGTH = 64
"""The longest event, token or user id (the width of their database columns)."""

NAME_LENGTH = 64
"""The longest model name or version (model names are at most 63 characters)."""

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_LENGTH)]
_Name = Annotated[str, msgspec.Meta(max_length=NAME_LENGTH)]
_Count = Annotated[int, msgspec.Meta(ge=0)]


class UsageEvent(msgspec.Struct, frozen=True):
    """One finished request: who, which model, how many tokens, how long, how it ended.

    ``latency_ms`` is whole milliseconds (sums stay exact), ``status`` the HTTP status answered
    (400 and above count as errors), ``at`` the Unix time the request finished (it picks the hour).
    """

    event_id: _Id
    token_id: _Id
    user_id: _Id
    model: _Name
    version: _Name
    prompt_tokens: _Count
    completion_tokens: _Count
    latency_ms: _Count
    status: int
    at: float

    @property
    def failed(self) -> bool:
        return self.status >= 400


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageEvent)


def encode(event: UsageEvent) -> bytes:
    return _encoder.encode(event)


def decode(raw: bytes) -> UsageEvent:
    """The event in ``raw``; raises ``msgspec.DecodeError`` (or its ``ValidationError``)."""
    return _decoder.decode(raw)
