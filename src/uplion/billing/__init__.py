"""Billing: usage events from the gateways, folded into hourly totals with one write per batch.

- ``UsageEvent``: what the gateway reports per finished request.
- ``UsageStream`` (``connect(url)``: ``MemoryUsageStream`` or ``RedisUsageStream``): where it
  goes; ``emit`` is cheap and never raises.
- ``Aggregator`` / ``run_aggregator``: the consumer that writes ``usage_hourly`` exactly once per
  event; ``usage_report`` reads it back for the admin API. ``AggregatorThread`` runs one in a
  thread of its own, off the gateway's event loop (``uplion run``).
"""

from __future__ import annotations

from uplion.billing.aggregator import Aggregator, run_aggregator
from uplion.billing.background import AggregatorThread
from uplion.billing.events import UsageEvent
from uplion.billing.stream import MemoryUsageStream, RedisUsageStream, UsageStream, connect
from uplion.billing.tables import UsageRow, usage_report

__all__ = [
    "Aggregator",
    "AggregatorThread",
    "MemoryUsageStream",
    "RedisUsageStream",
    "UsageEvent",
    "UsageRow",
    "UsageStream",
    "connect",
    "run_aggregator",
    "usage_report",
]
