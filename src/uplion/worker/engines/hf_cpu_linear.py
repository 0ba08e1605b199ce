"""Linear layers whose bfloat16 weights are laid out once for oneDNN, for decoding on a CPU.

A decoding step multiplies a few rows of activations by every weight matrix, so it is bound by
reading the weights. ``torch.nn.Linear`` on a CPU hands oneDNN a plain row-major matrix at every
call; packed once into oneDNN's own blocked layout (what ``torch.compile`` does for the CPU with
frozen weights, here without compiling), each step reads the weights at close to the memory's
speed. Measured on a 2-core AMD EPYC (AVX-512 bf16), SmolLM2-135M in bfloat16: a step of one
sequence 58.8 -> 34.2 ms, of eight 71.6 -> 48.2 ms.

Only the linear layers of a model loaded in bfloat16 on the CPU are packed (what ``dtype: auto``
decodes in where the CPU has bfloat16 instructions); float32 keeps PyTorch's own path. The packed
weight replaces the layer's own; tied weights (an output layer
sharing the input embedding) get a packed copy, the embedding keeps its tensor.
"""

from __future__ import annotations

from typing import Any

import torch


class PackedLinear(torch.nn.Module):
    """``torch.nn.Linear`` (inference only) with its weight in oneDNN's blocked layout."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = linear.bias

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            inputs, self.packed_weight, self.bias, "none", [], ""
        )
        return result

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def can_pack(model: Any) -> bool:
    """Whether the linear layers of ``model`` (on the CPU) are worth packing: bfloat16, and
    PyTorch built with oneDNN."""
    return bool(model.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]


def pack(model: torch.nn.Module) -> int:
    """Replace every ``torch.nn.Linear`` of ``model`` (exactly that class: subclasses may
    compute differently) by a ``PackedLinear``; returns how many."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced
