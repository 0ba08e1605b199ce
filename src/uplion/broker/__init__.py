"""Brokers: the queue between gateway and workers. ``connect(url)`` picks one by URL scheme.

- ``memory://``: embedded, in-process (one machine, the default of ``uplion run``)
- ``redis://`` / ``rediss://``: Redis Streams (the default in clusters)
- ``pulsar://`` / ``pulsar+ssl://``: Apache Pulsar (options: ``uplion.broker.pulsar_names``)
"""

from __future__ import annotations

from uplion.broker import memory, pulsar, pulsar_names, redis_streams
from uplion.broker.base import (
    MAX_DELIVERIES,
    Backlog,
    Broker,
    BrokerUnavailable,
    Consumer,
    Delivery,
)

__all__ = ["MAX_DELIVERIES", "Backlog", "Broker", "BrokerUnavailable", "Consumer", "Delivery",
           "connect"]


def connect(url: str) -> Broker:
    """A broker for ``url``; call ``await broker.start()`` before use."""
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        return memory.MemoryBroker()
    if scheme in ("redis", "rediss", "unix"):
        return redis_streams.RedisStreamsBroker(url)
    if scheme in pulsar_names.SCHEMES:
        return pulsar.PulsarBroker(url)
    raise ValueError(f"unknown broker URL scheme {scheme!r}: use memory://, redis://host:port "
                     "or pulsar://host:6650")
