"""The one exception fetching raises, with a reason a model's status can carry."""

from __future__ import annotations

from typing import Literal

Reason = Literal[
    "SourceNotFound", "AccessDenied", "ChecksumMismatch", "InvalidSource", "FetchFailed",
    "UnsafeArchive",
]


class FetchError(Exception):
    """A source that could not be fetched: ``reason`` is a CamelCase word for statuses and
    ``message`` a sentence naming the source's URI (never a credential or a signed query)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: str = reason
        self.message = message


class TransientError(FetchError):
    """A failure worth trying again (a 5xx answer, a dropped connection)."""

    def __init__(self, message: str) -> None:
        super().__init__("FetchFailed", message)
