"""The relay's rules for one task's reply: follow the newest delivery, forward each position once,
end a redelivered stream where it ends, and notice chunks lost on the way."""

from __future__ import annotations

from typing import Any

import pytest

from uplion import protocol
from uplion.gateway.relay import ChunksLost, Reassembly


def text(word: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": word}, "logprobs": None,
                         "finish_reason": finish}]}


def chunk(delivery: str, seq: int, attempt: int = 1, kind: protocol.ChunkKind = "data",
          word: str = "") -> protocol.Chunk:
    usage = protocol.Usage(5, seq + 1) if kind == "final" else None
    data = text(word or f"{delivery}{seq}", "stop" if kind == "final" else None)
    return protocol.Chunk("t", delivery, seq, kind, data=data, usage=usage, attempt=attempt)


def forwarded(reply: Reassembly, chunks: list[protocol.Chunk]) -> list[tuple[str, int]]:
    out = []
    for offered in chunks:
        accepted = reply.accept(offered)
        if accepted is not None:
            out.append((accepted.delivery, accepted.seq))
    return out


def test_in_order_chunks_pass_and_repeats_are_dropped() -> None:
    reply = Reassembly()
    chunks = [chunk("a", 0), chunk("a", 1), chunk("a", 1), chunk("a", 2, kind="final")]
    assert forwarded(reply, chunks) == [("a", 0), ("a", 1), ("a", 2)]


def test_a_redelivery_resumes_after_what_the_client_has() -> None:
    reply = Reassembly()
    first = [chunk("a", 0), chunk("a", 1), chunk("a", 2)]
    again = [chunk("b", 0, attempt=2), chunk("b", 1, attempt=2), chunk("b", 2, attempt=2),
             chunk("b", 3, attempt=2), chunk("b", 4, attempt=2, kind="final")]
    assert forwarded(reply, first + again) == [("a", 0), ("a", 1), ("a", 2), ("b", 3), ("b", 4)]


def test_a_redelivered_stream_that_ends_earlier_still_ends() -> None:
    reply = Reassembly()
    first = [chunk("a", seq) for seq in range(6)]
    assert len(forwarded(reply, first)) == 6
    again = [chunk("b", 0, attempt=2), chunk("b", 1, attempt=2),
             chunk("b", 2, attempt=2, kind="final", word="late")]
    ends = [reply.accept(c) for c in again]
    assert ends[:2] == [None, None]
    final = ends[2]
    assert final is not None
    assert final.kind == "final"
    assert final.usage == protocol.Usage(5, 3)
    assert final.data is not None  # the end, without text at a position the client has
    assert final.data["choices"][0]["finish_reason"] == "stop"
    assert final.data["choices"][0]["delta"] == {}


def test_a_completion_stream_ending_earlier_keeps_its_finish_without_text() -> None:
    reply = Reassembly()
    for seq in range(3):
        reply.accept(chunk("a", seq))
    late = protocol.Chunk("t", "b", 0, "final", attempt=2, usage=protocol.Usage(1, 1), data={
        "choices": [{"index": 0, "text": "late", "logprobs": None, "finish_reason": "length"}]})
    final = reply.accept(late)
    assert final is not None
    assert final.data == {
        "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]}


def test_an_error_of_a_redelivery_ends_the_reply() -> None:
    reply = Reassembly()
    for seq in range(3):
        reply.accept(chunk("a", seq))
    error = protocol.Chunk("t", "b", 0, "error", attempt=2, error=protocol.ErrorInfo("boom"))
    assert reply.accept(error) == error


def test_a_gap_within_a_delivery_is_an_error() -> None:
    reply = Reassembly()
    reply.accept(chunk("a", 0))
    reply.accept(chunk("a", 1))
    with pytest.raises(ChunksLost) as caught:
        reply.accept(chunk("a", 4))
    assert "2 chunks" in str(caught.value)


def test_a_delivery_seen_first_past_its_start_is_a_gap() -> None:
    with pytest.raises(ChunksLost):
        Reassembly().accept(chunk("a", 2))
    reply = Reassembly()
    reply.accept(chunk("a", 0))
    with pytest.raises(ChunksLost):
        reply.accept(chunk("b", 3, attempt=2))


def test_late_chunks_of_a_superseded_delivery_are_dropped() -> None:
    reply = Reassembly()
    reply.accept(chunk("a", 0))
    reply.accept(chunk("b", 0, attempt=2))
    # the stalled first worker wakes up: its chunks (even a new start) never reach the client
    assert forwarded(reply, [chunk("a", 1), chunk("a", 0), chunk("c", 0, attempt=1)]) == []
    assert forwarded(reply, [chunk("b", 1, attempt=2)]) == [("b", 1)]


def test_a_task_given_back_and_taken_again_is_followed() -> None:
    reply = Reassembly()  # released on a worker's shutdown: the same attempt, a new delivery
    assert forwarded(reply, [chunk("a", 0), chunk("b", 0), chunk("b", 1)]) == [("a", 0),
                                                                              ("b", 1)]
