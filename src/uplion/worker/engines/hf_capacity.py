"""How many generations a batch holds: the KV cache's memory per token, from the model's
configuration, against a memory budget.

A causal LM keeps, for every token of every sequence in the batch, a key and a value vector per
layer and KV head: ``layers x kv heads x head dim x 2 x dtype size`` bytes. The batch is padded to
its longest sequence, so ``rows x longest`` tokens must fit the budget; a worker holds at most as
many requests as fit when each may grow to ``max_total_tokens`` (prompt and completion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uplion import protocol
from uplion.worker.engines import base

CPU_BUDGET_MB = 1024
"""The KV cache budget on the CPU when the ``kv_cache_mb`` option is not set."""
GPU_FREE_SHARE = 0.5
"""On a GPU, the share of the memory free after loading the weights, when not set."""


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one batch of generations may hold."""

    bytes_per_token: int
    budget_tokens: int
    """Tokens the KV cache budget holds, over all rows (padding included)."""
    max_total_tokens: int
    """The most tokens one request may hold: its prompt and completion together."""

    @property
    def max_rows(self) -> int:
        """Requests the batch is sure to hold at once, each at ``max_total_tokens``."""
        return max(1, self.budget_tokens // self.max_total_tokens)

    def fits(self, rows: int, longest: int) -> bool:
        """Whether ``rows`` sequences padded to ``longest`` tokens fit the budget."""
        return rows <= self.max_rows and rows * longest <= self.budget_tokens

    def check(self, prompt_tokens: int, total: int, param_name: str) -> None:
        """A 400 ``request_too_large`` for a request that could not fit even alone."""
        if total <= self.max_total_tokens:
            return
        raise base.EngineError(
            protocol.ErrorInfo(
                message=(
                    f"The {param_name} is {prompt_tokens} tokens and max_tokens asks for "
                    f"{total - prompt_tokens} more, {total} tokens in all; this model's workers "
                    f"hold at most {self.max_total_tokens} tokens per request (their KV cache "
                    "budget: engine options kv_cache_mb and max_total_tokens). Lower max_tokens "
                    f"or shorten the {param_name}."
                ),
                type="invalid_request_error",
                code="request_too_large",
                param="max_tokens",
                status=400,
            )
        )


def bytes_per_token(config: Any, dtype_size: int) -> int:
    """KV cache bytes one token takes in every layer of the model."""
    text = config.get_text_config(decoder=True)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return int(text.num_hidden_layers) * kv_heads * head_dim * 2 * dtype_size


def budget_bytes(device: str, option_mb: int | None) -> int:
    """The KV cache budget: the ``kv_cache_mb`` option, else ``CPU_BUDGET_MB`` on the CPU and
    ``GPU_FREE_SHARE`` of the free memory on a GPU (measured after the weights are loaded)."""
    if option_mb is not None:
        return option_mb * 2**20
    if device == "cpu":
        return CPU_BUDGET_MB * 2**20
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free * GPU_FREE_SHARE)


def capacity(
    per_token: int, budget: int, context: int | None, max_total_tokens: int | None, where: str
) -> Capacity:
    """The capacity of a batch; ``base.Unrecoverable`` when the budget holds no useful request."""
    tokens = budget // per_token
    limits = [n for n in (context, max_total_tokens) if n is not None]
    per_request = min([*limits, tokens])
    if per_request < 16:
        raise base.Unrecoverable(
            "InvalidConfig",
            f"{where}: the KV cache budget of {budget / 2**20:.0f} MiB holds {tokens} tokens at "
            f"{per_token} bytes per token, too few to serve a request; raise the engine option "
            "kv_cache_mb",
        )
    return Capacity(per_token, tokens, per_request)
