"""What can go wrong talking to Redis, in names the rest of uplion may import.

``Error`` is every failure of a Redis call; ``is_outage`` tells those that mean Redis cannot serve
now (refused, reset, timed out, still loading its data, a replica that turned read-only in a
failover) from a command Redis refused (``ResponseError``: a wrong type, a missing group).
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as _ConnectionError
from redis.exceptions import ReadOnlyError as _ReadOnlyError
from redis.exceptions import RedisError as Error
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as _TimeoutError

__all__ = ["Error", "ResponseError", "has_code", "is_outage"]

_OUTAGES = (_ConnectionError, _TimeoutError, _ReadOnlyError, OSError)


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` means Redis is unreachable or cannot serve for now."""
    return isinstance(error, _OUTAGES)


def has_code(error: BaseException, code: str) -> bool:
    """Whether ``error`` is Redis's reply with this error code (``NOGROUP``, ``BUSYGROUP``)."""
    return isinstance(error, ResponseError) and str(error).startswith(code)
