"""What a worker says about its model in its heartbeat, and what the gateway keeps of it."""

from __future__ import annotations

import pytest

from uplion import protocol
from uplion.broker.memory import MemoryBroker
from uplion.gateway.health import HealthBoard
from uplion.models import EngineSpec, ModelSpec
from uplion.worker import Worker
from uplion.worker.engines import base
from uplion.worker.engines.echo import EchoEngine


def _status(at: float, info: protocol.ModelInfo | None, worker: str = "w1",
            state: protocol.WorkerState = "running") -> protocol.WorkerStatus:
    return protocol.WorkerStatus(worker=worker, model="m", version="1", state=state, slots=1,
                                 busy=0, at=at, info=info)


def test_the_board_keeps_the_newest_info_of_any_worker() -> None:
    board = HealthBoard()
    assert board.info("m", "1") is None
    old, new = protocol.ModelInfo(platform="old"), protocol.ModelInfo(platform="new")
    board.record(_status(10.0, new, worker="w2"))
    board.record(_status(5.0, old, worker="w1"))
    board.record(_status(20.0, None, worker="w3", state="failed"))
    assert board.info("m", "1") == new
    assert board.info("m", "2") is None


def test_info_travels_compactly_on_the_wire() -> None:
    info = protocol.ModelInfo(serves="tensor", platform="p", inputs=(
        protocol.TensorInfo("x", "FP32", (-1, 3)),))
    raw = protocol.encode(_status(1.0, info))
    assert b'"inputs":[["x","FP32",[-1,3]]]' in raw
    assert b"outputs" not in raw
    assert protocol.decode_status(raw).info == info


@pytest.mark.parametrize(
    ("serves", "tensors", "expected"),
    [(None, "", "text-generation"), ("embedding", "", "embedding"),
     (None, "identity", "tensor"), ("classification", "any", "classification")],
)
def test_what_a_worker_serves_and_reports(
    serves: str | None, tensors: str, expected: str
) -> None:
    spec = ModelSpec.model_validate({"name": "m", "serves": serves,
                                     "engine": EngineSpec(kind="test-echo")})
    worker = Worker(MemoryBroker(), spec, EchoEngine(tensors=tensors), name="w")
    assert worker.serves == expected
    info = worker.model_info()
    assert info.serves == expected
    assert info.platform == "uplion-test-echo"
    if tensors == "identity":
        assert info.inputs[0] == protocol.TensorInfo("x", "FP32", (-1, 3))
    if expected == "classification":
        assert [o.name for o in info.outputs] == ["label", "score"]


def test_a_bad_tensors_option_names_it() -> None:
    with pytest.raises(ValueError, match="option 'tensors' must be identity or any"):
        EchoEngine(tensors="sum")


def test_engine_tensor_specs_are_reported_as_declared() -> None:
    engine = EchoEngine()
    engine.info.inputs = [base.TensorSpec("a", "INT8", [2])]
    worker = Worker(MemoryBroker(), ModelSpec(name="m", serves="tensor",
                                              engine=EngineSpec(kind="test-echo")), engine)
    assert worker.model_info().inputs == (protocol.TensorInfo("a", "INT8", (2,)),)
    assert worker.model_info().outputs == ()
