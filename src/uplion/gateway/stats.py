"""Live figures per model version over the last minutes: requests, errors and latency percentiles.

What ``GET /admin/stats`` answers and ``uplion rollout evaluate`` gates on. Each model version
has a ring of one-second buckets, ``HORIZON_S`` of them. Recording an answer adds to the current
bucket's counts and to one bin of its latency histogram (bins ``2 ** (1/8)`` apart, so a
percentile is within about 5 % of the truth): a few integer additions, no allocation once the
bucket exists. A window's figures merge the buckets of its last seconds.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HORIZON_S = 600
_BINS_PER_OCTAVE = 8
_FLOOR_MS = 0.05  # the first bin holds every answer up to this one's upper edge
_BINS = _BINS_PER_OCTAVE * 24  # up to 0.05 ms * 2**24: about 14 minutes
_EMPTY = bytes(4 * _BINS)


def _bin(seconds: float) -> int:
    ms = seconds * 1000
    if ms <= _FLOOR_MS:
        return 0
    return min(int(math.log2(ms / _FLOOR_MS) * _BINS_PER_OCTAVE), _BINS - 1)


def _edge_ms(index: int) -> float:
    """The lower edge of bin ``index`` (bin 0 starts at 0)."""
    return 0.0 if index == 0 else _FLOOR_MS * 2 ** (index / _BINS_PER_OCTAVE)


def _percentile(histogram: list[int], count: int, q: float) -> float:
    """The ``q`` quantile in ms, interpolated inside its bin."""
    rank = max(q * count, 1.0)
    seen = 0
    for index, in_bin in enumerate(histogram):
        if in_bin and seen + in_bin >= rank:
            low, high = _edge_ms(index), _edge_ms(index + 1)
            return low + (high - low) * (rank - seen) / in_bin
        seen += in_bin
    return _edge_ms(_BINS)


class _Bucket:
    __slots__ = ("errors", "latency", "requests", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.requests = 0
        self.errors = 0
        self.latency = array("I", _EMPTY)

    def reset(self, second: int) -> None:
        self.second = second
        self.requests = 0
        self.errors = 0
        self.latency = array("I", _EMPTY)


@dataclass(frozen=True, slots=True)
class Figures:
    model: str
    version: str
    window_s: int
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "requests": self.requests,
            "errors": self.errors, "error_rate": round(self.errors / self.requests, 6),
            "requests_per_s": round(self.requests_per_s, 3), "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3), "p99_ms": round(self.p99_ms, 3),
        }


class Series:
    """One model version's ring of one-second buckets."""

    __slots__ = ("_clock", "_ring", "model", "version")

    def __init__(self, model: str, version: str, clock: Callable[[], float]) -> None:
        self.model = model
        self.version = version
        self._clock = clock
        self._ring: list[_Bucket | None] = [None] * HORIZON_S

    def record(self, status: int, seconds: float) -> None:
        """One answer: its HTTP status (5xx counts as an error) and its latency."""
        now = int(self._clock())
        slot = now % HORIZON_S
        bucket = self._ring[slot]
        if bucket is None:
            bucket = self._ring[slot] = _Bucket(now)
        elif bucket.second != now:
            bucket.reset(now)
        bucket.requests += 1
        if status >= 500:
            bucket.errors += 1
        bucket.latency[_bin(seconds)] += 1

    def figures(self, window_s: int, span_s: float) -> Figures | None:
        """The last ``window_s`` seconds (the current one included), or None if no answer;
        the rate is over ``span_s`` when the stats are younger than the window."""
        now = int(self._clock())
        requests = errors = 0
        histogram = [0] * _BINS
        for bucket in self._ring:
            if bucket is None or not now - window_s < bucket.second <= now:
                continue
            requests += bucket.requests
            errors += bucket.errors
            histogram = [total + n for total, n in zip(histogram, bucket.latency, strict=True)]
        if not requests:
            return None
        return Figures(
            self.model, self.version, window_s, requests, errors,
            requests / max(min(window_s, span_s), 1.0), _percentile(histogram, requests, 0.5),
            _percentile(histogram, requests, 0.95), _percentile(histogram, requests, 0.99),
        )


class LiveStats:
    """Every model version's series, created on first use."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._series: dict[tuple[str, str], Series] = {}

    def series(self, model: str, version: str) -> Series:
        found = self._series.get((model, version))
        if found is None:
            found = self._series[(model, version)] = Series(model, version, self._clock)
        return found

    def figures(self, window_s: int) -> list[Figures]:
        """Each model version answered in the last ``window_s`` (1..``HORIZON_S``) seconds."""
        if not 1 <= window_s <= HORIZON_S:
            raise ValueError(f"the window must be within 1..{HORIZON_S} s, not {window_s}")
        span_s = self._clock() - self._started
        found = (series.figures(window_s, span_s) for _, series in sorted(self._series.items()))
        return [figures for figures in found if figures is not None]
