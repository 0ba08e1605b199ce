"""Fault: PostgreSQL stops while the billing aggregator runs.

Requests keep being served (the gateway reads tokens from the principal cache, never the
database); the usage events of the requests answered meanwhile stay in the Redis usage stream,
unapplied, while the aggregator's writes fail; once PostgreSQL is back they are written, each
exactly once.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from tests.faults import cluster
from tests.faults.conftest import Report
from tests.faults.load import Answer, Load, until
from tests.stores import PostgresServer

_FAILED_WRITE = re.compile(r"flushing \d+ usage events failed")
BEFORE, DURING = 30, 60  # answers before the stop, and while PostgreSQL is down
OUTAGE_S = 2.0  # PostgreSQL stays down at least this long


@pytest.mark.redis
def test_usage_waits_for_postgres(
    stoppable_postgres: PostgresServer, tmp_path: Path, report: Report
) -> None:
    with cluster.running(tmp_path, stoppable_postgres.create_database()) as running:
        running.start(gateways=1, workers={"worker-1": "echo"})
        token_id, token = running.token()
        load = Load(list(running.gateways.values()), token, lanes=4)
        kept, failed_writes, down_s = asyncio.run(_stop_postgres(running, stoppable_postgres,
                                                                 load))
        exited = running.exited()
        running.bill()
        billed = running.billed(token_id)

    served = [a for a in load.answers if a.status == 200]
    report(
        f"PostgreSQL down {down_s:.1f} s under {len(load.answers)} requests "
        f"({load.summary()}); {kept} usage events kept in the stream meanwhile, "
        f"{failed_writes} failed writes; billed {billed.requests} requests / {billed.tokens} "
        f"tokens once it was back, for the client's {len(served)} x 200 / "
        f"{sum(a.tokens for a in served)} tokens; exited: {exited or 'none'}"
    )
    assert exited == {}
    assert load.summary() == f"{len(load.answers)} x 200", "requests failed without PostgreSQL"
    assert kept >= DURING, "the usage of the outage was not kept in the stream"
    assert failed_writes > 0
    assert (billed.requests, billed.errors, billed.prompt_tokens, billed.completion_tokens) == (
        len(served), 0, sum(a.prompt_tokens for a in served),
        sum(a.completion_tokens for a in served)), "every answer billed exactly once"


async def _stop_postgres(
    running: cluster.Cluster, postgres: PostgresServer, load: Load
) -> tuple[int, int, float]:
    """Stop PostgreSQL under load until ``DURING`` answers came and the aggregator failed to
    write; the events kept in the stream, the failed writes, how long it was down."""
    lanes = asyncio.create_task(load.run())
    try:
        await load.until(_ok, BEFORE, "answers before the stop")
        await until(lambda: "flush (" in running.log("billing").read_text(),
                    "a first write of the aggregator")
        await asyncio.to_thread(postgres.stop)
        stopped_at = time.monotonic()
        await load.until(lambda a: _ok(a) and a.started > stopped_at, DURING,
                         "answers without PostgreSQL")
        await until(lambda: _failed_writes(running) > 0
                    and time.monotonic() > stopped_at + OUTAGE_S,
                    "failed writes of the aggregator")
    finally:
        load.stop()
        await lanes
    # Every event of the outage is in the stream (gateways send within milliseconds) and
    # none is applied: what the stream holds is what the client got since the stop, at least.
    answered = load.count(lambda a: _ok(a) and a.started > stopped_at)
    await until(lambda: (running.usage_backlog() or 0) >= answered,
                "the outage's usage events in the stream")
    kept = running.usage_backlog() or 0
    failed = _failed_writes(running)
    await asyncio.to_thread(postgres.start)
    return kept, failed, time.monotonic() - stopped_at


def _failed_writes(running: cluster.Cluster) -> int:
    return len(_FAILED_WRITE.findall(running.log("billing").read_text()))


def _ok(answer: Answer) -> bool:
    return answer.status == 200
