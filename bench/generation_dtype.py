"""Which dtype serves `make run`'s chat model best on this CPU, and whether its answers stay right.

For SmolLM2-135M-Instruct as the transformers engine loads it, and for each way of holding its
weights (float32; bfloat16; bfloat16 with the linear layers packed for oneDNN, what ``dtype:
auto`` picks on a CPU with bfloat16 instructions), it prints:

- single-stream decoding speed (greedy, ``TOKENS`` new tokens, best of three) against the
  memory-bandwidth bound (weight bytes read per token / measured read bandwidth);
- top-1 agreement with float32: the share of positions where the next token float32 ranks first
  is the one this dtype ranks first, teacher-forced over float32's own greedy answers to the chat
  bench's eight prompts and over a passage of this repository's docs;
- perplexity of that passage (float32's beside it).

    .venv/bin/python -m bench.generation_dtype
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.engines_chat import TOPICS, default_model_yaml, messages, read_bandwidth

TOKENS = 64
PASSAGE_TOKENS = 512
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from uplion import fetch
    from uplion.models.spec import FetchSpec
    from uplion.worker.engines import devices, hf_cpu_linear, hf_loading

    entry = yaml.safe_load(default_model_yaml())["models"][0]
    folder = hf_loading.plan(fetch.fetch(entry["source"], FetchSpec()), None).folder
    threads = devices.set_cpu_threads(None)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def load(dtype: Any, packed: bool = False) -> tuple[Any, int]:
        """The model, and the bytes of weights a decoding step reads (counted before packing:
        packed weights are no parameters)."""
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        model.eval()
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if packed:
            hf_cpu_linear.pack(model)
        return model, weight_bytes

    reference, reference_bytes = load(torch.float32)
    prompts = [_prompt(tokenizer, index) for index in range(len(TOPICS))]
    with torch.inference_mode():
        answers = [reference.generate(p, max_new_tokens=96, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id) for p in prompts]
    passage_text = (ROOT / "docs" / "architecture.md").read_text()
    passage = tokenizer(passage_text, return_tensors="pt")["input_ids"][:, :PASSAGE_TOKENS]
    sequences = [*answers, passage]
    reference_ranks = _top1(reference, sequences)
    bandwidth = read_bandwidth()
    auto = devices.torch_dtype("cpu", "auto", decodes=True)

    print(f"generation dtype: {entry['name']} on {threads} torch threads, "
          f"memory read {bandwidth / 1e9:.1f} GB/s; dtype auto here: "
          f"{str(auto).removeprefix('torch.')}")
    variants: list[tuple[str, Callable[[], tuple[Any, int]]]] = [
        ("float32", lambda: (reference, reference_bytes)),
        ("bfloat16", lambda: load(torch.bfloat16)),
        ("bfloat16, packed", lambda: load(torch.bfloat16, packed=True)),
    ]
    for name, make in variants:
        model, weight_bytes = make()
        ranks = _top1(model, sequences)
        agree = sum(int((a == b).sum()) for a, b in zip(ranks, reference_ranks, strict=True))
        total = sum(r.numel() for r in ranks)
        bound = bandwidth / weight_bytes
        speed = _single_stream(model, tokenizer, prompts[0])
        print(f"  {name:<17} {speed:>5.1f} tok/s (bandwidth bound {bound:>5.1f})  "
              f"top-1 agreement with float32 {100 * agree / total:>5.1f} % of {total}  "
              f"perplexity {_perplexity(model, passage):>6.2f}")


def _prompt(tokenizer: Any, index: int) -> Any:
    ids = tokenizer.apply_chat_template(messages(index), add_generation_prompt=True,
                                        return_tensors="pt")
    return ids if not hasattr(ids, "keys") else ids["input_ids"]


def _top1(model: Any, sequences: list[Any]) -> list[Any]:
    import torch

    with torch.inference_mode():
        return [model(s).logits[0, :-1].float().argmax(-1) for s in sequences]


def _perplexity(model: Any, passage: Any) -> float:
    import torch

    with torch.inference_mode():
        logits = model(passage).logits[0, :-1].float()
    chosen = torch.log_softmax(logits, -1).gather(1, passage[0, 1:, None])
    return float(torch.exp(-chosen.mean()))


def _single_stream(model: Any, tokenizer: Any, prompt: Any) -> float:
    import torch

    best = 0.0
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=8, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
        for _ in range(3):
            started = time.perf_counter()
            model.generate(prompt, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
            best = max(best, TOKENS / (time.perf_counter() - started))
    return best


if __name__ == "__main__":
    main()
