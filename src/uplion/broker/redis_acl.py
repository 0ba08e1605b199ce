"""The Redis account of a worker: the broker and nothing else (Redis 7 ACL rules).

A worker pod runs the model's code (an engine, a child server, a pickle it was told to trust);
its Redis account must not let that code write principals, rate limits, quotas or usage. These
rules give the worker user only what a worker does with the broker's keys (``redis_streams.keys``):

- its topics ``uplion:topic:*``: read and write, with the stream commands a consumer uses (group
  create, read, claim, pending, ack, release and its trimming) and the broker's Lua scripts;
- the gateways' reply streams ``uplion:reply:*``: write only (XADD, PEXPIRE): a worker cannot
  read another gateway's answers;
- cancellation marks ``uplion:cancelled:*``: read only (MGET); the channel ``uplion:cancel``:
  subscribe only;
- the status hash ``uplion:workers``: write only (HSET); the channel ``uplion:status``: publish
  only (a selector);
- connection commands (AUTH, HELLO, PING, SELECT, ...) except the administrative ones.

Everything else (``uplion:principal:*``, ``uplion:usage``, ``uplion:rl:*``, ``uplion:quota:*``,
other commands, FLUSHALL, CONFIG, KEYS, SCAN) is refused with ``NOPERM``. KEDA's Redis scaler
(XPENDING, XINFO GROUPS, XLEN on the topics) may use the same account.

``python -m uplion.broker.redis_acl`` prints the rules (without user and password) as the chart
keeps them in ``charts/uplion/files/redis-worker.acl``.
"""

from __future__ import annotations

from uplion.broker.redis_streams import keys

WORKER_USER = "uplion-worker"

_COMMANDS = (
    # A consumer of the topics: take, claim, ack, release (the Lua scripts call XPENDING, XCLAIM,
    # XRANGE, XACK, XADD, XINFO and XGROUP SETID).
    "xgroup|create", "xgroup|setid", "xreadgroup", "xautoclaim", "xpending", "xclaim", "xack",
    "xrange", "xadd", "xinfo|stream", "xinfo|groups", "xlen", "evalsha", "eval", "script|load",
    # Replies, cancellation marks, statuses.
    "pexpire", "mget", "hset", "subscribe", "unsubscribe",
)


def worker_rules() -> list[str]:
    """The worker's permissions as ``ACL SETUSER`` arguments (after its name and password)."""
    return [
        "resetkeys", "resetchannels", "-@all",
        f"~{keys.TOPIC_PREFIX}*", f"%W~{keys.REPLY_PREFIX}*", f"%R~{keys.CANCELLED_PREFIX}*",
        f"%W~{keys.STATUS_KEY}", f"&{keys.CANCEL_CHANNEL}",
        "+@connection", "-@admin", "-@dangerous",
        *(f"+{command}" for command in _COMMANDS),
        f"(+publish &{keys.STATUS_CHANNEL})",
    ]


def worker_acl_line(password: str, user: str = WORKER_USER) -> str:
    """The worker's line of a Redis ACL file (``aclfile``)."""
    return " ".join(["user", user, "on", f">{password}", *worker_rules()])


if __name__ == "__main__":
    print(" ".join(worker_rules()))
