"""What the tensor engines (``onnx``, ``sklearn``, ``xgboost``, ``lightgbm``) share: the outputs
a request asks for, and the 400 a bad request gets.

BYTES tensors are numpy object arrays: their elements may be ``bytes`` or ``str`` going in, and
are ``bytes`` coming out.
"""

from __future__ import annotations

from collections.abc import Sequence

from uplion import protocol
from uplion.worker.engines import base


def requested(specs: Sequence[base.TensorSpec], outputs: Sequence[str]) -> list[str]:
    """The names of the outputs to compute: those asked for, in order and each once, or all when
    none are;
    a 400 naming the output when the model has no such output."""
    names = [spec.name for spec in specs]
    for name in outputs:
        if name not in names:
            raise bad_request(
                f"the model has no output {name!r}; its outputs are: {', '.join(names)}",
                "outputs",
            )
    return list(dict.fromkeys(outputs)) if outputs else names


def bad_request(message: str, param: str) -> base.EngineError:
    return base.EngineError(protocol.ErrorInfo(
        message, type="invalid_request_error", param=param, status=400,
    ))
