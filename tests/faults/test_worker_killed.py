"""Fault: a worker is SIGKILLed while it streams answers.

Two workers of a slow echo model hold four streams each; once every stream has reached the
client in part, one worker is killed. Its tasks are redelivered to the other worker after the
visibility timeout (1 s), and every stream completes: the client gets each word exactly once and
in order, the usage and ``[DONE]``; each request is billed once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.faults import cluster
from tests.faults.conftest import Report
from tests.faults.load import Stream, until
from tests.stores import PostgresServer

MODEL, TOPIC = "echo-slow", "model.echo-slow@1"  # 50 ms a word, 4 slots a worker
STREAMS, WORDS = 8, 40
VICTIM, SURVIVOR = "worker-1", "worker-2"


def _content(index: int) -> str:
    return " ".join(f"s{index}w{word}" for word in range(WORDS))


@pytest.mark.redis
def test_streams_complete_from_another_worker(
    postgres_server: PostgresServer, tmp_path: Path, report: Report
) -> None:
    with cluster.running(tmp_path, postgres_server.create_database()) as running:
        running.start(gateways=1, workers={VICTIM: MODEL, SURVIVOR: MODEL})
        token_id, token = running.token()
        streams, held, taken_over_s = asyncio.run(_kill_mid_stream(running, token))
        exited = running.exited()
        running.bill()
        billed = running.billed(token_id)

    received = [len(stream.deltas) for stream in streams]
    report(
        f"killed {VICTIM} holding {len(held)} of {STREAMS} streams mid-way; {SURVIVOR} took "
        f"them over {taken_over_s:.1f} s later; words received per stream {received} "
        f"(expected {WORDS} each, in order, once); billed {billed.requests} requests / "
        f"{billed.tokens} tokens (expected {STREAMS} / {STREAMS * 2 * WORDS}); "
        f"exited: {exited}"
    )
    assert exited == {VICTIM: -9}
    assert len(held) == STREAMS // 2
    for index, stream in enumerate(streams):
        assert (stream.status, stream.error, stream.done) == (200, None, True)
        assert stream.text == _content(index), "a word missing or twice"
        assert stream.usage == {"prompt_tokens": WORDS, "completion_tokens": WORDS,
                                "total_tokens": 2 * WORDS}
    assert billed == cluster.Totals(STREAMS, 0, STREAMS * WORDS, STREAMS * WORDS)


async def _kill_mid_stream(
    running: cluster.Cluster, token: str
) -> tuple[list[Stream], dict[str, tuple[str, int]], float]:
    gateway = running.gateways["gw1"]
    streams = [Stream(gateway) for _ in range(STREAMS)]
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                 timeout=30) as client:
        reading = [asyncio.create_task(stream.read(client, MODEL, _content(index)))
                   for index, stream in enumerate(streams)]
        try:
            await until(lambda: all(len(s.deltas) >= 3 for s in streams)
                        and _holders(running) == {VICTIM: 4, SURVIVOR: 4},
                        "every stream under way, four on each worker")
            held = {entry: holder for entry, holder in running.held_tasks(TOPIC).items()
                    if holder[0] == VICTIM}
            running.kill(VICTIM)
            killed_at = time.monotonic()
            await until(lambda: _taken_over(running, held),
                        f"the tasks of {VICTIM} taken over by {SURVIVOR}")
            taken_over_s = time.monotonic() - killed_at
            await asyncio.gather(*reading)
        finally:
            for task in reading:
                task.cancel()
    return streams, held, taken_over_s


def _taken_over(running: cluster.Cluster, held: dict[str, tuple[str, int]]) -> bool:
    """Whether the survivor holds (or has answered) every task the victim held."""
    now = running.held_tasks(TOPIC)
    return all(now[entry][0] == SURVIVOR for entry in held if entry in now)


def _holders(running: cluster.Cluster) -> dict[str, int]:
    counts: dict[str, int] = {}
    for holder, _deliveries in running.held_tasks(TOPIC).values():
        counts[holder] = counts.get(holder, 0) + 1
    return counts
