"""Binary tensor bytes cross the broker as base64 in the task's and the chunk's JSON (Redis,
Pulsar) or as they are (the memory broker); both read back as the same bytes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from uplion import protocol, schemas


def _task(payload: dict[str, Any]) -> protocol.Task:
    return protocol.Task(id="t", model="m", version="1", protocol=protocol.Protocol.KSERVE_V2,
                         payload=payload, stream=False, deadline=1e12, reply_to="gw")


@pytest.mark.parametrize("encoded", [False, True], ids=["memory", "json"])
def test_raw_input_bytes_survive_the_broker(encoded: bool) -> None:
    raw = bytes(range(8))
    payload = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                           "parameters": {"binary_data_size": 8}, "raw": raw}]}
    task = _task(payload)
    if encoded:
        task = protocol.decode_task(protocol.encode(task))
        assert isinstance(task.payload["inputs"][0]["raw"], str)
    request = schemas.parse(task.payload, schemas.V2InferRequest)
    assert request.inputs[0].raw == raw


def test_raw_output_bytes_survive_the_broker() -> None:
    raw = b"\x00\xffbinary"
    chunk = protocol.Chunk("t", "d", 0, "final", data={"outputs": [
        {"name": "y", "datatype": "UINT8", "shape": [len(raw)], "raw": raw}]})
    decoded = protocol.decode_chunk(protocol.encode(chunk))
    (output,) = msgspec.convert((decoded.data or {})["outputs"], list[schemas.V2OutputTensor])
    assert output.raw == raw


def test_worker_side_check_of_raw_sizes() -> None:
    with pytest.raises(schemas.InvalidRequest, match="inputs\\[0\\]': input 'x' has shape"):
        schemas.parse({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                                   "raw": "AAAAAA=="}]}, schemas.V2InferRequest)
