"""An embedding model's forward pass and pooling as one TorchScript graph: one call, no GIL.

Called eagerly, a transformers encoder runs a hundred-odd PyTorch operations from Python and
takes the GIL back between any two of them. While another thread of the process holds it (on
``uplion run`` the gateway's event loop, answering hundreds of requests, shares the process with
the worker), each of those steps waits up to the interpreter's switch interval (5 ms), and the
forward pass stalls whenever the event loop is busy. Traced once with ``torch.jit.trace``, the
pass, pooling included, is a single call that runs without the GIL, beside the event loop.

A trace records what its example did: a branch taken on the values of the inputs is fixed to
the example's. So the graph is kept only if its vectors match the eager ones on inputs unlike
the example (another batch size, other lengths, with padding and without); otherwise, or if the
model cannot be traced, embeddings stay eager.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from uplion.worker.engines import hf_pooling

log = logging.getLogger(__name__)

Encode = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
"""Tokenized texts (``input_ids``, ``attention_mask``, ...) on the model's device -> one float32
vector per text."""

_EXAMPLE = ["a short text", "a somewhat longer text, with more words"]
_CHECKS = (
    ["one", "two words", "and a third text, longer than the two others by far"],
    ["a text alone, without padding"],
)


def eager(model: Any, pooling: hf_pooling.Pooling) -> Encode:
    """The forward pass and pooling, called from Python."""

    def encode(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = model(**inputs).last_hidden_state
        return hf_pooling.pool(hidden, inputs["attention_mask"], pooling)

    return encode


def traced(
    model: Any, tokenize: Callable[[list[str]], Mapping[str, torch.Tensor]],
    pooling: hf_pooling.Pooling,
) -> Encode | None:
    """``model`` and ``pooling`` traced into one graph, checked against the eager pass on
    texts tokenized by ``tokenize`` (as requests are: padded, on the device); ``None`` when the
    model cannot be traced or its graph answers differently."""
    reference = eager(model, pooling)
    example = tokenize(_EXAMPLE)
    names = tuple(example)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python values
            graph = torch.jit.trace(  # type: ignore[no-untyped-call]
                _Pooled(model, names, pooling), tuple(example[name] for name in names),
                check_trace=False,
            )

        def encode(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
            result: torch.Tensor = graph(*(inputs[name] for name in names))
            return result

        differs = _differs(reference, encode, tokenize, names, _tolerance(model))
    except Exception as error:  # an architecture the tracer cannot follow
        differs = f"{type(error).__name__}: {error}"
    if differs:
        log.info("the embedding pass runs eagerly, not traced (%s)", differs)
        return None
    return encode


def _differs(
    reference: Encode, encode: Encode,
    tokenize: Callable[[list[str]], Mapping[str, torch.Tensor]], names: tuple[str, ...],
    tolerance: float,
) -> str | None:
    """How ``encode`` answers unlike ``reference`` on texts unlike the example; ``None`` when
    it does not."""
    with torch.inference_mode():
        for texts in _CHECKS:
            inputs = tokenize(texts)
            if tuple(inputs) != names:
                return "the tokenizer's outputs vary"
            expected, found = reference(inputs), encode(inputs)
            if expected.shape != found.shape or not torch.allclose(
                expected, found, rtol=1e-3, atol=tolerance
            ):
                return "its traced graph answers unlike the model: a branch on the inputs' values"
    return None


def _tolerance(model: Any) -> float:
    dtype = getattr(model, "dtype", torch.float32)
    return 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2


class _Pooled(torch.nn.Module):
    """The model, then the pooling, over tensors passed in the order of ``names``."""

    def __init__(self, model: Any, names: tuple[str, ...], pooling: hf_pooling.Pooling) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.pooling = pooling

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.names, tensors, strict=True))
        hidden = self.model(**inputs).last_hidden_state
        return hf_pooling.pool(hidden, inputs["attention_mask"], self.pooling)
