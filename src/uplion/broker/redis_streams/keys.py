"""The Redis keys, channels and stream fields of the Redis Streams broker (its whole layout)."""

from __future__ import annotations

TOPIC_PREFIX = "uplion:topic:"
"""``uplion:topic:<topic>``: a stream per topic, one entry per task."""
TASK_FIELD = b"t"
"""A topic entry's encoded task (also written by the Lua scripts)."""
DELIVERIES_FIELD = b"d"
"""How many times a released task had been delivered before it was appended again."""
REPLY_PREFIX = "uplion:reply:"
"""``uplion:reply:<address>``: a stream per gateway, one entry per chunk."""
CHUNK_FIELD = b"c"
CANCELLED_PREFIX = "uplion:cancelled:"
"""``uplion:cancelled:<task id>``: set while a cancelled task could still be taken."""
CANCEL_CHANNEL = "uplion:cancel"
STATUS_CHANNEL = "uplion:status"
STATUS_KEY = "uplion:workers"
"""A hash of worker name -> its last status."""
