"""The task's ``max_tokens`` (what the gateway reserved) caps every generation, whatever the
request asks; ``Progress`` counts what was generated."""

from __future__ import annotations

import time
from typing import Any

import pytest

from uplion import protocol
from uplion.worker import replies
from uplion.worker.engines.echo import EchoEngine

TEXT = "one two three four five six"


def task(kind: protocol.Protocol, payload: dict[str, Any], cap: int | None) -> protocol.Task:
    now = time.time()
    return protocol.Task(id="t", model="m", version="1", protocol=kind, payload=payload,
                         stream=False, deadline=now + 30, reply_to="gw", created=now,
                         max_tokens=cap)


async def final(reply: protocol.Task, progress: replies.Progress) -> replies.Part:
    parts = [part async for part in replies.answer(EchoEngine(), reply, "text-generation",
                                                   progress)]
    assert parts[-1].final
    return parts[-1]


@pytest.mark.parametrize(("asked", "cap", "words"), [(None, 2, 2), (5, 2, 2), (1, 2, 1),
                                                     (None, None, 6)])
async def test_chat_generates_no_more_than_the_task_allows(
    asked: int | None, cap: int | None, words: int
) -> None:
    payload: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": TEXT}]}
    if asked is not None:
        payload["max_tokens"] = asked
    progress = replies.Progress()
    part = await final(task(protocol.Protocol.OPENAI_CHAT, payload, cap), progress)
    assert part.data is not None
    assert part.data["choices"][0]["message"]["content"] == " ".join(TEXT.split()[:words])
    assert part.usage == protocol.Usage(6, words)
    assert progress.usage == protocol.Usage(6, words)


async def test_completion_is_capped() -> None:
    payload = {"model": "m", "prompt": TEXT, "max_tokens": 16}
    part = await final(task(protocol.Protocol.OPENAI_COMPLETION, payload, 3), replies.Progress())
    assert part.data is not None
    assert part.data["choices"][0] == {"index": 0, "text": "one two three", "logprobs": None,
                                       "finish_reason": "length"}


async def test_v2_generation_is_capped_per_text_over_tensor_parameters() -> None:
    payload = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2],
                           "data": [TEXT, "a b c d"], "parameters": {"max_tokens": 10}}]}
    progress = replies.Progress()
    part = await final(task(protocol.Protocol.KSERVE_V2, payload, 2), progress)
    assert part.data is not None
    assert part.data["outputs"][0]["data"] == ["one two", "a b"]
    assert part.usage == protocol.Usage(10, 4)
    assert progress.usage == part.usage
