"""The chat figures of ``bench.engines``: SmolLM2-135M-Instruct as ``make run`` serves it (its
entry in ``uplion/defaults/models.yaml``), tokens/s and time to first token (p50, p99) at 1, 4, 8
and 16 concurrent streams through the gateway and worker, each beside the same model called
directly with transformers in this process (``generate`` on a left-padded batch of the same
prompts: the floor for overhead), with peak RSS.

Each stream sends streamed chat requests (``TOKENS`` new tokens, temperature 0) one after
another for ``duration`` seconds (at least one each); tokens/s counts completion tokens over all
streams by wall time. Targets (this 2-core machine): one stream at least 25 tokens/s, eight
streams at least 5x one stream's figure.

    .venv/bin/python -m bench.engines --only chat [--duration 10]
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import yaml

STREAMS = (1, 4, 8, 16)
TOKENS = 64
MODEL = "smollm2-135m-instruct"
TOPICS = ["a cat", "the sea", "a robot", "bread", "a mountain", "winter", "a library", "a river"]

Serve = Callable[[str, Path, str], AbstractContextManager[Any]]
"""``bench.engines.uplion``: serves a models file, yields its ``Served``."""


@dataclass(frozen=True)
class Figures:
    tokens: int
    seconds: float
    first_token_s: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.first_token_s)
        return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def messages(index: int) -> list[dict[str, str]]:
    topic = TOPICS[index % len(TOPICS)]
    return [{"role": "user", "content": f"Write a long story about {topic} (story {index})."}]


def default_model_yaml() -> str:
    """The chat model's entry of the models ``make run`` serves, as a models file."""
    text = resources.files("uplion.defaults").joinpath("models.yaml").read_text()
    entry = next(m for m in yaml.safe_load(text)["models"] if m["name"] == MODEL)
    return yaml.safe_dump({"models": [entry]})


def section(workdir: Path, duration: int, serve: Serve) -> list[str]:
    direct = Direct()
    bandwidth = read_bandwidth()
    lines = [f"chat: {MODEL}, transformers engine as `make run` serves it "
             f"({str(direct.dtype).removeprefix('torch.')}), {TOKENS} tokens per request, "
             "temperature 0 (direct: transformers generate on a padded batch, in the bench's "
             "process)",
             f"  one stream's memory bound: {direct.weight_bytes / 1e6:.0f} MB of weights read per "
             f"token at {bandwidth / 1e9:.1f} GB/s = {bandwidth / direct.weight_bytes:.0f} tok/s "
             "(the issue's float32 figure: 0.54 GB at 23 GB/s, about 25 tok/s)"]
    with serve(default_model_yaml(), workdir, "chat") as served:
        url = f"{served.url}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {served.token}"}
        asyncio.run(_through_gateway(url, headers, 1, 0.0))  # warm up
        single: float | None = None
        for streams in STREAMS:
            ours = asyncio.run(_through_gateway(url, headers, streams, duration))
            theirs = direct.run(streams, duration)
            single = single or ours.rate
            target = {1: "target >= 25 tok/s",
                      8: f"{ours.rate / single:.1f}x one stream (target >= 5x)"}.get(streams, "")
            lines.append(_line(f"uplion, {streams:>2} streams", ours, served.peak_rss_mb(),
                               target))
            lines.append(_line(f"direct, {streams:>2} streams", theirs, direct.peak_rss_mb(), ""))
    return lines


def _line(what: str, figures: Figures, rss_mb: float, note: str) -> str:
    return (f"  {what:<20} {figures.rate:>7.1f} tok/s  first token p50 "
            f"{figures.percentile(0.5) * 1000:>6.0f} ms p99 {figures.percentile(0.99) * 1000:>6.0f}"
            f" ms ({len(figures.first_token_s):>3} requests)  peak RSS {rss_mb:>5.0f} MB  "
            f"{note}").rstrip()


async def _through_gateway(
    url: str, headers: dict[str, str], streams: int, duration: float
) -> Figures:
    first: list[float] = []
    tokens = 0
    started = time.perf_counter()
    until = started + duration

    async def stream(index: int, client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while True:
            sent = time.perf_counter()
            body = {"model": MODEL, "messages": messages(index), "max_tokens": TOKENS,
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            async with client.stream("POST", url, json=body, headers=headers) as reply:
                reply.raise_for_status()
                seen = False
                async for line in reply.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if not seen and any(c["delta"].get("content") for c in chunk["choices"]):
                        first.append(time.perf_counter() - sent)
                        seen = True
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
            index += streams
            if time.perf_counter() >= until:
                return

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        await asyncio.gather(*(stream(index, client) for index in range(streams)))
    return Figures(tokens, time.perf_counter() - started, first)


class Direct:
    """The model called directly with transformers, as the engine loads it (the converted GGUF
    folder, the dtype ``auto`` resolves to, its linear layers packed where the engine packs
    them, the engine's default thread count)."""

    def __init__(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from uplion import fetch
        from uplion.models.spec import FetchSpec
        from uplion.worker.engines import devices, hf_cpu_linear, hf_loading

        entry = yaml.safe_load(default_model_yaml())["models"][0]
        path = fetch.fetch(entry["source"], FetchSpec())
        folder = hf_loading.plan(path, None).folder
        devices.set_cpu_threads(None)
        self.dtype = devices.torch_dtype("cpu", "auto", decodes=True)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype)
        self.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if hf_cpu_linear.can_pack(model):
            hf_cpu_linear.pack(model)
        self.model = model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        self.run(1, 0.0)  # warm up

    def run(self, streams: int, duration: float) -> Figures:
        """Batches of ``streams`` prompts through ``generate``, one after another, for
        ``duration`` seconds (at least one)."""
        first: list[float] = []
        tokens = 0
        started = time.perf_counter()
        batch = 0
        while True:
            prompts = [self.tokenizer.apply_chat_template(
                messages(batch * streams + i), tokenize=False, add_generation_prompt=True)
                for i in range(streams)]
            inputs = self.tokenizer(prompts, return_tensors="pt", padding=True,
                                    add_special_tokens=False)
            timer = _FirstToken()
            output = self.model.generate(
                **inputs, max_new_tokens=TOKENS, do_sample=False, streamer=timer,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            first.extend([timer.first_s] * streams)
            new = output[:, inputs["input_ids"].shape[1]:]
            eos = self.model.generation_config.eos_token_id
            ends = set(eos if isinstance(eos, list) else [eos])
            tokens += sum(_produced(row.tolist(), ends) for row in new)
            batch += 1
            if time.perf_counter() - started >= duration:
                return Figures(tokens, time.perf_counter() - started, first)

    @staticmethod
    def peak_rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


def _produced(row: list[int], ends: set[int]) -> int:
    """Tokens generated in a row of ``generate``'s output: up to and with its end token."""
    for at, token in enumerate(row):
        if token in ends:
            return at + 1
    return len(row)


class _FirstToken:
    """A ``generate`` streamer noting when the first new token comes (its first ``put`` is the
    prompt)."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._puts = 0
        self.first_s = 0.0

    def put(self, value: Any) -> None:
        self._puts += 1
        if self._puts == 2:
            self.first_s = time.perf_counter() - self._started

    def end(self) -> None:
        return None


def read_bandwidth() -> float:
    """Bytes per second this machine reads: summing 512 MiB of floats, best of five."""
    import torch

    values = torch.ones(2**27, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        values.sum()
        best = min(best, time.perf_counter() - started)
    return values.numel() * 4 / best
