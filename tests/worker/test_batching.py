"""Dynamic batching: the tasks a worker holds for one model share engine calls.

Batches are made to form deterministically: a long ``max_batch_delay_ms`` makes a batch wait
until it is full, so the tests wait on replies, never on time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from tests.engines import tensor_models as tm
from uplion import protocol
from uplion.broker.memory import MemoryBroker
from uplion.models import EngineSpec, ModelSpec
from uplion.worker import Worker, batching
from uplion.worker.engines import base
from uplion.worker.engines.classic import ClassicEngine

REPLY_TO = "gw-batch"
WAIT_FOR_FULL_MS = 10_000.0


class Embedder(base.Engine):
    """Embeds each text as [its word count, its length], counting a token per word; records the
    texts of every call."""

    def __init__(self) -> None:
        self.info = base.EngineInfo(platform="test", serves="embedding", embedding_dimensions=2)
        self.calls: list[list[str]] = []

    def batchable(self) -> frozenset[base.Batchable]:
        return frozenset({"embed"})

    async def embed(self, texts: list[str]) -> base.Embeddings:
        self.calls.append(list(texts))
        tokens = [len(text.split()) for text in texts]
        vectors = [[float(n), float(len(text))] for n, text in zip(tokens, texts, strict=True)]
        return base.Embeddings(vectors, sum(tokens), tokens)


class RecordingClassic(ClassicEngine):
    """The scikit-learn engine, recording the rows of every call."""

    def __init__(self, artifact: base.Artifact) -> None:
        super().__init__("sklearn", artifact)
        self.rows: list[int] = []

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        self.rows.append(len(inputs["input"]))
        return await super().infer(inputs, outputs)


class Replies:
    def __init__(self) -> None:
        self.finals: dict[str, protocol.Chunk] = {}
        self.changed = asyncio.Event()

    def __call__(self, chunk: protocol.Chunk) -> None:
        if chunk.terminal:
            self.finals[chunk.task_id] = chunk
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.finals) < count:
                self.changed.clear()
                await self.changed.wait()


def spec(concurrency: int, max_batch_size: int, delay_ms: float = WAIT_FOR_FULL_MS) -> ModelSpec:
    return ModelSpec(name="m", engine=EngineSpec(kind="test-echo"), concurrency=concurrency,
                     max_batch_size=max_batch_size, max_batch_delay_ms=delay_ms)


def task(task_id: str, kind: protocol.Protocol, payload: dict[str, Any]) -> protocol.Task:
    now = time.time()
    return protocol.Task(id=task_id, model="m", version="1", protocol=kind, payload=payload,
                         stream=False, deadline=now + 30, reply_to=REPLY_TO, created=now)


def embedding(task_id: str, text: str) -> protocol.Task:
    return task(task_id, protocol.Protocol.OPENAI_EMBEDDING, {"model": "m", "input": text})


def rows(task_id: str, values: np.ndarray) -> protocol.Task:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(values.shape),
              "raw": values.astype("<f4").tobytes()}
    return task(task_id, protocol.Protocol.KSERVE_V2, {"inputs": [tensor]})


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    instance = MemoryBroker()
    await instance.start()
    yield instance
    await instance.close()


async def serve(
    broker: MemoryBroker, model: ModelSpec, engine: base.Engine, tasks: list[protocol.Task]
) -> dict[str, protocol.Chunk]:
    """Publish ``tasks``, run a worker until each is answered, and return the final chunks."""
    replies = Replies()
    await broker.subscribe_replies(REPLY_TO, replies)
    worker = Worker(broker, model, engine)
    for each in tasks:
        await broker.publish(worker.topic, each)
    running = asyncio.create_task(worker.run())
    await replies.wait_for(len(tasks))
    worker.stop()
    await running
    return replies.finals


async def test_concurrent_tasks_become_one_engine_call(broker: MemoryBroker) -> None:
    engine = Embedder()
    texts = ["one", "two words", "now three words", "and four words here"]
    finals = await serve(broker, spec(concurrency=1, max_batch_size=4), engine,
                         [embedding(f"t{i}", text) for i, text in enumerate(texts)])
    assert [sorted(call) for call in engine.calls] == [sorted(texts)]
    for index, text in enumerate(texts):
        final = finals[f"t{index}"]
        assert final.kind == "final"
        assert final.data is not None
        assert final.data["data"][0]["embedding"] == [len(text.split()), len(text)]
        assert final.usage == protocol.Usage(prompt_tokens=len(text.split()))  # its own tokens


async def test_a_batch_holds_at_most_max_batch_size(broker: MemoryBroker) -> None:
    engine = Embedder()
    tasks = [embedding(f"t{i}", "a text") for i in range(6)]
    worker_spec = spec(concurrency=2, max_batch_size=3)
    assert Worker(broker, worker_spec, engine).capacity == 6  # two slots of three
    finals = await serve(broker, worker_spec, engine, tasks)
    assert [len(call) for call in engine.calls] == [3, 3]
    assert {final.kind for final in finals.values()} == {"final"}


async def test_max_batch_size_one_turns_batching_off(broker: MemoryBroker) -> None:
    engine = Embedder()
    worker_spec = spec(concurrency=2, max_batch_size=1)
    assert Worker(broker, worker_spec, engine).capacity == 2
    assert batching.wrap(worker_spec, engine) is engine
    await serve(broker, worker_spec, engine, [embedding(f"t{i}", "text") for i in range(4)])
    assert [len(call) for call in engine.calls] == [1, 1, 1, 1]


async def test_without_a_delay_a_batch_runs_what_has_arrived(broker: MemoryBroker) -> None:
    engine = Embedder()
    finals = await serve(broker, spec(concurrency=1, max_batch_size=8, delay_ms=0), engine,
                         [embedding("only", "alone")])
    assert engine.calls == [["alone"]]
    assert finals["only"].kind == "final"


async def logistic_engine(
    tmp_path: Path,
) -> tuple[np.ndarray[Any, Any], LogisticRegression, RecordingClassic]:
    """The test dataset's features, a model fitted on them, and that model loaded in a
    recording scikit-learn engine."""
    features, labels, _ = tm.dataset()
    model = LogisticRegression(max_iter=200).fit(features, labels)
    engine = RecordingClassic(base.Artifact(tm.save_joblib(model, tmp_path / "m.joblib"),
                                            trust_pickle=True))
    await engine.load()
    return features, model, engine


async def test_a_bad_input_fails_its_own_request_not_the_batch(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    features, model, engine = await logistic_engine(tmp_path)
    good = [features[i:i + 2] for i in (0, 2, 4)]
    bad = np.array([[np.nan, 0, 0, 0]], dtype=np.float32)  # scikit-learn refuses NaN
    tasks = [rows("g0", good[0]), rows("bad", bad), rows("g1", good[1]), rows("g2", good[2])]
    finals = await serve(broker, spec(concurrency=1, max_batch_size=4), engine, tasks)
    assert engine.rows[0] == 7  # one call for the four, which fails; then each alone
    assert sorted(engine.rows[1:]) == [1, 2, 2, 2]
    error = finals["bad"].error
    assert finals["bad"].kind == "error"
    assert error is not None
    assert error.status == 400
    assert "NaN" in error.message
    for index, values in enumerate(good):
        data = finals[f"g{index}"].data
        assert data is not None
        predict = next(out for out in data["outputs"] if out["name"] == "predict")
        assert predict["data"] == model.predict(values).tolist()


async def test_tensor_requests_share_a_call_and_get_their_own_rows(
    broker: MemoryBroker, tmp_path: Path
) -> None:
    features, model, engine = await logistic_engine(tmp_path)
    parts = [features[0:1], features[1:4], features[4:6]]
    finals = await serve(broker, spec(concurrency=1, max_batch_size=3), engine,
                         [rows(f"t{i}", part) for i, part in enumerate(parts)])
    assert engine.rows == [6]
    for index, part in enumerate(parts):
        data = finals[f"t{index}"].data
        assert data is not None
        outputs = {out["name"]: out for out in data["outputs"]}
        assert outputs["predict"]["shape"] == [len(part)]
        assert outputs["predict"]["data"] == model.predict(part).tolist()
        assert np.allclose(np.reshape(outputs["predict_proba"]["data"], (len(part), -1)),
                           model.predict_proba(part), atol=1e-6)


async def test_a_request_cancelled_while_waiting_leaves_its_batch() -> None:
    engine = Embedder()
    batched = batching.wrap(spec(concurrency=1, max_batch_size=2), engine)
    first = asyncio.create_task(batched.embed(["first"]))
    leaving = asyncio.create_task(batched.embed(["leaving"]))
    await asyncio.sleep(0)  # both wait, the batch not full: it needs two that stay
    leaving.cancel()
    third = asyncio.create_task(batched.embed(["third"]))
    one, three = await asyncio.gather(first, third)
    assert engine.calls == [["first", "third"]]
    assert (one.vectors, three.vectors) == ([[1.0, 5.0]], [[1.0, 5.0]])
    assert leaving.cancelled()
