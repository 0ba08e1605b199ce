"""``onnx``: any ONNX model over KServe v2 tensors, run by onnxruntime.

The artifact is a ``.onnx`` file, or a folder holding exactly one (external weight files beside
it are fine). Inputs and outputs are named and typed from the graph; a symbolic or unknown
dimension is ``-1``. Nothing is cast: the caller checks each input's datatype against
``info.inputs``, and onnxruntime refuses what still does not fit (a 400).

A ``ZipMap`` output (scikit-learn classifiers converted by skl2onnx with their default options:
``output_probability``, a sequence of ``{class: probability}`` maps) becomes an FP32
``[-1, -1]`` tensor with one column per class, in the model's class order, so that exported
models need no special options; ``options={"zipmap": False}`` at export gives the same numbers
as a plain tensor whose shape the metadata states exactly.

CUDA: ``device`` ``auto`` uses onnxruntime's CUDAExecutionProvider when this onnxruntime has it
(the ``onnxruntime-gpu`` package) and the session takes it; ``cuda`` or ``cuda:N`` without it
is ``DeviceUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from uplion.worker.engines import base, detect, tensor_io

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
"""onnxruntime's type names, and the v2 datatypes they become."""

_ZIPMAP = re.compile(r"seq\(map\((int64|string),tensor\(float\)\)\)")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_INVALID_ARGUMENT = ": INVALID_ARGUMENT :"


class OnnxTensorEngine(base.Engine):
    def __init__(self, artifact: base.Artifact, threads: int | None = None) -> None:
        self.artifact = artifact
        self.threads = threads
        self.info = base.EngineInfo(platform="onnxruntime", serves="tensor")
        self._session: Any = None
        self._strings: frozenset[str] = frozenset()
        self._zipmaps: frozenset[str] = frozenset()

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._session = None

    async def infer(
        self, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("the onnx engine is not loaded")
        names = tensor_io.requested(self.info.outputs, outputs)
        feed = {
            name: _strings_in(name, array) if name in self._strings else array
            for name, array in inputs.items()
        }
        return await asyncio.to_thread(self._run, names, feed)

    def batchable(self) -> frozenset[base.Batchable]:
        """``infer`` when every input and output has a first dimension of any size (the batch's,
        by convention); a graph with a fixed one takes its requests one by one."""
        tensors = [*self.info.inputs, *self.info.outputs]
        if tensors and all(spec.shape[:1] == [-1] for spec in tensors):
            return frozenset({"infer"})
        return frozenset()

    def _load(self) -> None:
        import onnxruntime

        if self.artifact.path is None:
            raise base.Unrecoverable("InvalidConfig", "the onnx engine needs a model source")
        model_file = detect.model_file(self.artifact.path, "onnx")
        providers, device = _providers(self.artifact.device, onnxruntime.get_available_providers())
        options = onnxruntime.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        session = onnxruntime.InferenceSession(
            str(model_file), sess_options=options, providers=providers
        )
        if device != "cpu" and _CUDA not in session.get_providers():
            if self.artifact.device != "auto":
                raise base.Unrecoverable(
                    "DeviceUnavailable",
                    f"device {self.artifact.device!r} was asked for but onnxruntime could not "
                    f"start its CUDA provider for {model_file.name} (see the worker's log)",
                )
            logger.warning("onnxruntime fell back to the CPU for %s", model_file)
            device = "cpu"
        self.info.inputs = [_spec(node, "input") for node in session.get_inputs()]
        self.info.outputs = [_spec(node, "output") for node in session.get_outputs()]
        self.info.device = device
        self.info.extra = {"model_file": model_file.name}
        self._strings = frozenset(s.name for s in self.info.inputs if s.datatype == "BYTES")
        self._zipmaps = frozenset(
            node.name for node in session.get_outputs() if _ZIPMAP.fullmatch(node.type)
        )
        self._session = session
        logger.info("loaded %s on %s", model_file, device)

    def _run(self, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self._session.run(names, feed)
        except Exception as error:
            # Told by the status code in the message, not the class: which class onnxruntime's
            # errors get depends on the pybind11 modules imported after it (pulsar-client's
            # makes them all RuntimeError).
            if _INVALID_ARGUMENT not in str(error):
                raise
            raise tensor_io.bad_request(str(error), "inputs") from error
        return {
            name: _columns(value) if name in self._zipmaps else _strings_out(value)
            for name, value in zip(names, results, strict=True)
        }


def _providers(requested: str, available: Sequence[str]) -> tuple[list[Any], str]:
    """onnxruntime's providers for the device asked for, and the device they mean."""
    if requested == "cpu" or (requested == "auto" and _CUDA not in available):
        return [_CPU], "cpu"
    if _CUDA not in available:
        raise base.Unrecoverable(
            "DeviceUnavailable",
            f"device {requested!r} was asked for but this onnxruntime has no {_CUDA} "
            f"(it has {', '.join(available)}); install onnxruntime-gpu, or set device: cpu "
            "or auto",
        )
    index = int(requested.partition(":")[2] or 0)
    return [(_CUDA, {"device_id": index}), _CPU], f"cuda:{index}"


def _spec(node: Any, role: str) -> base.TensorSpec:
    """The v2 tensor of an onnxruntime input or output (a ``NodeArg``)."""
    if _ZIPMAP.fullmatch(node.type):
        return base.TensorSpec(node.name, "FP32", [-1, -1])
    datatype = DATATYPES.get(node.type)
    if datatype is None:
        raise base.Unrecoverable(
            "UnsupportedModel",
            f"the ONNX model's {role} {node.name!r} has type {node.type}, which uplion cannot "
            f"carry as a v2 tensor (it carries {', '.join(DATATYPES)} and ZipMap outputs)",
        )
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape or []]
    return base.TensorSpec(node.name, datatype, shape)


def _strings_in(name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES input as onnxruntime takes it: ``str`` elements (it would stringify ``bytes``)."""
    import numpy as np

    texts: list[str] = []
    for item in array.ravel():
        if isinstance(item, bytes):
            try:
                item = item.decode()
            except UnicodeDecodeError as error:
                raise tensor_io.bad_request(
                    f"input {name!r}: elements of a string tensor must be UTF-8 ({error})",
                    "inputs",
                ) from error
        if not isinstance(item, str):
            raise tensor_io.bad_request(
                f"input {name!r}: elements of a BYTES tensor must be strings, not "
                f"{type(item).__name__}",
                "inputs",
            )
        texts.append(item)
    return np.array(texts, dtype=object).reshape(array.shape)


def _strings_out(value: np.ndarray) -> np.ndarray:
    """A string output with ``bytes`` elements, as BYTES tensors carry them; others as is."""
    import numpy as np

    if value.dtype != object:
        return value
    return np.array([str(item).encode() for item in value.ravel()], dtype=object).reshape(
        value.shape
    )


def _columns(maps: list[dict[Any, float]]) -> np.ndarray:
    """A ZipMap's rows of ``{class: probability}`` as an FP32 ``[rows, classes]`` tensor."""
    import numpy as np

    if not maps:
        return np.zeros((0, 0), dtype=np.float32)
    classes = list(maps[0])
    return np.array([[row[label] for label in classes] for row in maps], dtype=np.float32)
