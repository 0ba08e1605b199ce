"""Trying a transfer again after a transient failure, with exponential backoff."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from uplion.fetch.errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS = 5
FIRST_DELAY_S = 0.5


def retrying(attempt: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """``attempt()``, again after 0.5 s, 1 s, 2 s… (with jitter) while it raises
    ``TransientError``; the last one is raised when every attempt failed. Any other error
    (a 403, a 404) is raised at once."""
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except TransientError as error:
            if number == attempts:
                raise
            delay = FIRST_DELAY_S * 2 ** (number - 1) * random.uniform(0.8, 1.2)
            log.warning("%s; trying again in %.1f s (%d/%d)", error.message, delay, number,
                        attempts - 1)
            time.sleep(delay)
    raise AssertionError("unreachable")
