"""The Redis Streams broker: the queue of a cluster, shared by every gateway and worker.

Its parts, one job each:

- ``topics``: tasks (publish, take, claim a dead consumer's, ack, release, backlog);
- ``replies``: chunks to each gateway's stream, and the gateway's reader;
- ``signals``: cancellations and worker statuses (pub/sub, followed through outages);
- ``links``: settings, the clients and tasks the broker holds in its event loop, and the mapping
  of every Redis error to ``BrokerUnavailable``; ``keys``: the key layout;
- ``broker``: ``RedisStreamsBroker``, the ``Broker`` interface over those parts.

Redis is reached only through ``uplion.redisio``: every command has a socket timeout (the URL's
``socket_timeout``, default 5 s), so a partition makes a call fail with ``BrokerUnavailable``
instead of hanging; the long-running readers (replies, cancellations, statuses) retry with
backoff and resume. Lua scripts live next to the code as ``.lua`` files. Needs Redis 7.0 or later
(XAUTOCLAIM dropping deleted entries, group lag, ENTRIESREAD).

Event loop: connections are opened by the event loop that first uses the broker (``start`` only
checks that the server answers, on a connection of its own), and the broker then lives in that
loop. If the loop shuts down without ``close`` (``asyncio.run`` returning), everything the broker
opened is closed as the loop cancels its tasks. Consumers not closed by then are as good as
dead: their tasks come back after the visibility timeout.
"""

from __future__ import annotations

from uplion.broker.redis_streams.broker import RedisStreamsBroker
from uplion.broker.redis_streams.keys import TOPIC_PREFIX

_TOPIC_PREFIX = TOPIC_PREFIX  # the name tests/operator/test_manifests.py checks

__all__ = ["TOPIC_PREFIX", "RedisStreamsBroker"]
