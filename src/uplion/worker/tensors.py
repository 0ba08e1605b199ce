"""KServe v2 tensors to numpy arrays and back, checked against the model's declared tensors.

An input arrives as JSON ``data`` (row-major, flat or nested) or as ``raw`` bytes in the binary
extension's layout (row-major, little-endian; a ``BYTES`` element is a 4-byte little-endian length
then its bytes). ``BYTES`` tensors become object arrays of ``bytes``; every other datatype its
numpy dtype (``FP16`` is ``float16``, ``BOOL`` is ``bool``). An output goes back as JSON ``data``
(flat, row-major) or as ``raw`` bytes with ``parameters.binary_data_size``, as the request asks.
A bad tensor is a 400 (``EngineError``) that names it. numpy comes with the ``local`` extras: the
worker imports this module only to answer a v2 request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from uplion import protocol, schemas
from uplion.worker.engines import base

Array = npt.NDArray[Any]

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
"""The numpy dtype of each v2 datatype (little-endian, the binary extension's byte order)."""

_BY_KIND = {(dtype.kind, dtype.itemsize): name for name, dtype in DTYPES.items()
            if name not in ("BOOL", "BYTES")}

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "BOOL": (bool,), "BYTES": (str,),
    **{name: (int,) for name in DTYPES if name.startswith(("INT", "UINT"))},
    **{name: (int, float) for name in ("FP16", "FP32", "FP64")},
}
_JSON_NAMES = {bool: "true/false", str: "strings", int: "integers", float: "numbers"}


def invalid(message: str, param: str | None = None) -> base.EngineError:
    """A 400 for the client, in the v2 error shape at the gateway."""
    return base.EngineError(protocol.ErrorInfo(
        message, type="invalid_request_error", param=param, status=400
    ))


def datatype_of(array: Array) -> str:
    """The v2 datatype of an array an engine produced (strings and objects are ``BYTES``)."""
    kind = array.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "OUS":
        return "BYTES"
    name = _BY_KIND.get((kind, array.dtype.itemsize))
    if name is None:
        raise base.EngineError(protocol.ErrorInfo(
            f"The model produced a tensor of numpy dtype {array.dtype}, which has no KServe "
            "v2 datatype.", code="engine_error",
        ))
    return name


def check(inputs: Sequence[schemas.V2Tensor], specs: Sequence[base.TensorSpec]) -> None:
    """Names, datatypes and shapes against the model's inputs (``-1``: any size); no checks
    when the model declares none."""
    if not specs:
        return
    declared = {spec.name: spec for spec in specs}
    for index, tensor in enumerate(inputs):
        spec = declared.get(tensor.name)
        where = f"inputs[{index}]"
        if spec is None:
            raise invalid(f"unknown input {tensor.name!r}: this model's inputs are "
                          f"{_names(specs)}", where)
        if tensor.datatype != spec.datatype:
            raise invalid(f"input {tensor.name!r} must be {spec.datatype}, not "
                          f"{tensor.datatype}", f"{where}.datatype")
        if len(tensor.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
        ):
            raise invalid(f"input {tensor.name!r} has shape {tensor.shape}; this model takes "
                          f"{spec.shape} (-1: any size)", f"{where}.shape")
    given = {tensor.name for tensor in inputs}
    missing = [spec.name for spec in specs if spec.name not in given]
    if missing:
        raise invalid(f"missing input {', '.join(repr(n) for n in missing)}: this model takes "
                      f"{_names(specs)}", "inputs")


def _names(specs: Sequence[base.TensorSpec]) -> str:
    return ", ".join(f"{spec.name} ({spec.datatype} {spec.shape})" for spec in specs)


def decode(tensor: schemas.V2Tensor, index: int) -> Array:
    """The array an input holds, in its shape. Binary data is read in place (read-only)."""
    dtype = DTYPES[tensor.datatype]
    if tensor.raw is not None:
        if tensor.datatype != "BYTES":
            return np.frombuffer(tensor.raw, dtype=dtype).reshape(tensor.shape)
        return _objects(schemas.split_bytes(tensor.raw)).reshape(tensor.shape)
    flat = schemas.flatten(tensor.data or [])
    allowed = _JSON_TYPES[tensor.datatype]
    wrong = {type(item) for item in flat} - set(allowed)
    if wrong:
        found = ", ".join(sorted(_JSON_NAMES.get(kind, kind.__name__) for kind in wrong))
        raise invalid(
            f"input {tensor.name!r} is {tensor.datatype}: its data must be "
            f"{' or '.join(_JSON_NAMES[kind] for kind in allowed)}, not {found}",
            f"inputs[{index}].data",
        )
    if tensor.datatype == "BYTES":
        return _objects([item.encode() for item in flat]).reshape(tensor.shape)
    try:
        return np.array(flat, dtype=dtype).reshape(tensor.shape)
    except OverflowError:
        raise invalid(f"input {tensor.name!r} holds a value out of the range of "
                      f"{tensor.datatype}", f"inputs[{index}].data") from None


def _objects(items: list[bytes]) -> Array:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def texts(request: schemas.V2InferRequest) -> list[str]:
    """A text model's texts: the elements of the request's first BYTES input, as UTF-8."""
    for index, tensor in enumerate(request.inputs):
        if tensor.datatype == "BYTES":
            try:
                return [item.decode() for item in decode(tensor, index).reshape(-1)]
            except UnicodeDecodeError:
                raise invalid(f"input {tensor.name!r}: BYTES elements must be UTF-8 text",
                              f"inputs[{index}]") from None
    raise invalid("This model takes a BYTES input tensor of texts.", "inputs")


def strings(items: Sequence[str]) -> Array:
    """A BYTES array of texts (UTF-8)."""
    return _objects([item.encode() for item in items])


def fp32(values: Sequence[float] | Sequence[Sequence[float]]) -> Array:
    return np.asarray(values, dtype=np.float32)


def encode(name: str, value: Array, binary: bool, datatype: str | None = None) -> dict[str, Any]:
    """An output tensor for the reply: ``raw`` bytes when ``binary``, else JSON ``data``.
    ``datatype`` is the declared one (the array is cast to it); by default the array's own."""
    array = np.asarray(value)
    datatype = datatype or datatype_of(array)
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if datatype == "BYTES":
        items = [_as_bytes(item) for item in array.reshape(-1).tolist()]
        if binary:
            out["raw"] = schemas.join_bytes(items)
            return out
        try:
            out["data"] = [item.decode() for item in items]
        except UnicodeDecodeError:
            raise invalid(f"output {name!r} holds bytes that are not UTF-8 text: ask for it "
                          "as binary data (parameters.binary_data)", "outputs") from None
        return out
    typed = np.ascontiguousarray(array, dtype=DTYPES[datatype])
    if binary:
        out["raw"] = typed.tobytes()
    else:
        out["data"] = typed.reshape(-1).tolist()
    return out


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    return str(item).encode()


def select(
    request: schemas.V2InferRequest, produced: dict[str, Array],
    declared: Sequence[base.TensorSpec],
) -> list[dict[str, Any]]:
    """The outputs to answer: those the request names, in its order (all the model produced
    when it names none), each binary or JSON as the request asks."""
    names = [output.name for output in request.outputs or []] or list(produced)
    types = {spec.name: spec.datatype for spec in declared}
    for index, name in enumerate(names):
        if name not in produced:
            raise invalid(f"unknown output {name!r}: this model's outputs are "
                          f"{', '.join(produced)}", f"outputs[{index}]")
    return [encode(name, produced[name], request.binary_output(name), types.get(name))
            for name in names]


def check_outputs(request: schemas.V2InferRequest, specs: Sequence[base.TensorSpec]) -> None:
    """Requested outputs against the model's declared ones, before it runs."""
    if not specs:
        return
    known = {spec.name for spec in specs}
    for index, output in enumerate(request.outputs or []):
        if output.name not in known:
            raise invalid(f"unknown output {output.name!r}: this model's outputs are "
                          f"{_names(specs)}", f"outputs[{index}]")
