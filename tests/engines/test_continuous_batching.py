"""Continuous batching in the ``transformers`` engine, on a tiny random Llama built here: requests
join and leave one batch between steps, and each answers as it would alone (greedy text, stop
strings, token limits, seeded sampling, usage); the batch never holds more than its KV cache
budget, and a request that could not fit even alone is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from tests.engines import tiny_models
from tests.engines.streams import batch_of, collect, text_of, wait_until_idle
from uplion import protocol
from uplion.broker.memory import MemoryBroker
from uplion.models import EngineSpec, ModelSpec
from uplion.worker import Worker, engines
from uplion.worker.engines import base, hf_capacity
from uplion.worker.engines.transformers_engine import TransformersEngine

session_loop = pytest.mark.asyncio(loop_scope="session")
GREEDY = base.GenerationParams(temperature=0.0, max_tokens=16)
PROMPTS = [
    "the cat",
    "a big red car on the road under the blue sky",
    "the quick fox jumps over the lazy dog in the park by the river",
    "sun",
]
TINY_BYTES_PER_TOKEN = 2 * 2 * 8 * 2 * 4
"""The tiny Llama's KV cache per token: 2 layers x 2 KV heads x head dim 8 x K and V x fp32."""


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.causal_lm(tmp_path_factory.mktemp("batching") / "llama")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def llama(llama_dir: Path) -> AsyncIterator[TransformersEngine]:
    engine = await loaded(llama_dir)
    yield engine
    await engine.close()


async def loaded(path: Path, **options: Any) -> TransformersEngine:
    """The engine on the CPU in float32: a batched answer equals the solo one exactly there (in
    bfloat16 a different batch shape may round a near tie the other way)."""
    options.setdefault("dtype", "float32")
    engine = TransformersEngine(base.Artifact(path=path, device="cpu"), **options)
    await engine.load()
    return engine


@contextlib.contextmanager
def batch_sizes(engine: TransformersEngine) -> Iterator[list[int]]:
    """The number of rows of each forward pass of the engine's model meanwhile."""
    sizes: list[int] = []

    def record(_: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        sizes.append(int(kwargs["input_ids"].shape[0]))

    hook = engine._model.register_forward_hook(record, with_kwargs=True)
    try:
        yield sizes
    finally:
        hook.remove()


async def solo(engine: TransformersEngine, prompt: str, params: base.GenerationParams) -> list[
    base.TextDelta
]:
    """``prompt`` answered alone (the batch holds nothing else)."""
    return await collect(engine.complete(prompt, params))


@session_loop
async def test_greedy_answers_in_a_batch_of_different_lengths_equal_solo_ones(
    llama: TransformersEngine,
) -> None:
    alone = [await solo(llama, prompt, GREEDY) for prompt in PROMPTS]

    with batch_sizes(llama) as sizes:
        together = await asyncio.gather(*(collect(llama.complete(p, GREEDY)) for p in PROMPTS))

    assert [text_of(d) for d in together] == [text_of(d) for d in alone]
    assert [d[-1].usage for d in together] == [d[-1].usage for d in alone]
    assert max(sizes) == len(PROMPTS), "the prompts should have been decoded in one batch"
    assert len(sizes) < sum(len(d) for d in together), "one forward pass serves every row"


@session_loop
async def test_requests_join_and_leave_a_running_batch(llama: TransformersEngine) -> None:
    long = dataclasses.replace(GREEDY, max_tokens=60)
    short = dataclasses.replace(GREEDY, max_tokens=5)
    expected = [text_of(await solo(llama, p, params))
                for p, params in [(PROMPTS[1], long), (PROMPTS[0], short), (PROMPTS[2], short)]]

    with batch_sizes(llama) as sizes:
        first = llama.complete(PROMPTS[1], long)
        head = [await anext(first) for _ in range(3)]
        second = await collect(llama.complete(PROMPTS[0], short))  # joins, leaves
        third = await collect(llama.complete(PROMPTS[2], short))  # joins later, leaves
        rest = await collect(first)

    assert [text_of(head + rest), text_of(second), text_of(third)] == expected
    assert rest[-1].usage == protocol.Usage(
        prompt_tokens=len(PROMPTS[1].split()), completion_tokens=60)
    assert 2 in sizes, "the later requests should have joined the running one"
    assert sizes[-1] == 1, "the first request should have finished alone"


@session_loop
async def test_each_row_keeps_its_own_token_limit_and_stop_strings(
    llama: TransformersEngine,
) -> None:
    full = text_of(await solo(llama, PROMPTS[2], dataclasses.replace(GREEDY, max_tokens=24)))
    words = full.split(" ")
    at = next(i for i in range(2, len(words)) if words[i] not in words[:i])
    stop = f" {words[at]}"
    asks = [
        (PROMPTS[2], dataclasses.replace(GREEDY, max_tokens=24, stop=[stop, "zzz"])),
        (PROMPTS[2], dataclasses.replace(GREEDY, max_tokens=24)),
        (PROMPTS[1], dataclasses.replace(GREEDY, max_tokens=3)),
        (PROMPTS[3], dataclasses.replace(GREEDY, max_tokens=9)),
    ]

    answers = await asyncio.gather(*(collect(llama.complete(p, params)) for p, params in asks))

    stopped, whole, three, nine = answers
    assert text_of(stopped) == " ".join(words[:at])
    assert stopped[-1].finish_reason == "stop"
    assert text_of(whole) == full
    assert [d[-1].finish_reason for d in (whole, three, nine)] == ["length"] * 3
    assert [d[-1].usage.completion_tokens for d in (whole, three, nine) if d[-1].usage] == [
        24, 3, 9]
    assert three[-1].usage == protocol.Usage(prompt_tokens=len(PROMPTS[1].split()),
                                                  completion_tokens=3)


@session_loop
async def test_seeded_sampling_in_a_batch_equals_sampling_alone(llama: TransformersEngine) -> None:
    sampled = base.GenerationParams(temperature=1.0, top_p=0.9, seed=11, max_tokens=16)
    alone = text_of(await solo(llama, PROMPTS[0], sampled))

    together = await asyncio.gather(
        collect(llama.complete(PROMPTS[0], sampled)),
        collect(llama.complete(PROMPTS[1], dataclasses.replace(sampled, seed=12))),
        collect(llama.complete(PROMPTS[2], GREEDY)),
    )

    assert text_of(together[0]) == alone


@session_loop
async def test_cancelling_one_row_leaves_the_others_undisturbed(
    llama: TransformersEngine,
) -> None:
    params = dataclasses.replace(GREEDY, max_tokens=40)
    expected = text_of(await solo(llama, PROMPTS[1], params))
    kept = llama.complete(PROMPTS[1], params)
    dropped = llama.complete(PROMPTS[2], dataclasses.replace(params, max_tokens=4000))
    head = [await anext(kept)]
    await anext(dropped)
    assert batch_of(llama).rows == 2

    await dropped.aclose()  # type: ignore[attr-defined]
    rest = await collect(kept)

    assert text_of(head + rest) == expected
    assert rest[-1].usage == protocol.Usage(
        prompt_tokens=len(PROMPTS[1].split()), completion_tokens=40)
    wait_until_idle(llama)  # the dropped row is gone too, long before its 4000 tokens


@session_loop
async def test_a_request_that_cannot_fit_is_refused_naming_the_options(llama_dir: Path) -> None:
    engine = await loaded(llama_dir, kv_cache_mb=1, max_total_tokens=64)
    try:
        with pytest.raises(base.EngineError) as caught:
            await collect(engine.complete("the cat sat", dataclasses.replace(GREEDY,
                                                                             max_tokens=62)))
        fits = await collect(engine.complete("the cat sat", dataclasses.replace(GREEDY,
                                                                                max_tokens=61)))
    finally:
        await engine.close()

    error = caught.value.error
    assert (error.status, error.type, error.code, error.param) == (
        400, "invalid_request_error", "request_too_large", "max_tokens")
    assert "3 tokens and max_tokens asks for 62 more, 65 tokens in all" in error.message
    assert "at most 64 tokens per request" in error.message
    assert "kv_cache_mb" in error.message
    assert fits[-1].usage == protocol.Usage(prompt_tokens=3, completion_tokens=61)
    assert engine.info.context_length == 64


@session_loop
async def test_the_batch_never_holds_more_than_its_budget(llama_dir: Path) -> None:
    engine = await loaded(llama_dir, kv_cache_mb=1, max_total_tokens=2000)
    budget_tokens = 2**20 // TINY_BYTES_PER_TOKEN
    broker = MemoryBroker()
    spec = ModelSpec(name="m", engine=EngineSpec(kind="transformers"), concurrency=16)
    try:
        worker_slots = Worker(broker, spec, engine).capacity
        alone = [text_of(await solo(engine, p, GREEDY)) for p in PROMPTS]
        with batch_sizes(engine) as sizes:
            together = await asyncio.gather(
                *(collect(engine.complete(p, GREEDY)) for p in PROMPTS)
            )
    finally:
        await engine.close()

    assert engine.info.max_concurrency == budget_tokens // 2000 == 2
    assert worker_slots == 2, "a worker takes no more than its engine's batch holds"
    assert max(sizes) == 2, "two rows at most; the others wait for room"
    assert [text_of(d) for d in together] == alone


@session_loop
async def test_the_engine_reports_the_generations_its_budget_holds(
    llama: TransformersEngine,
) -> None:
    capacity = batch_of(llama).capacity

    assert capacity.bytes_per_token == TINY_BYTES_PER_TOKEN
    assert capacity.budget_tokens == hf_capacity.CPU_BUDGET_MB * 2**20 // TINY_BYTES_PER_TOKEN
    assert capacity.max_total_tokens == 4096  # the model's context
    assert llama.info.max_concurrency == capacity.budget_tokens // 4096


async def test_a_budget_too_small_for_any_request_fails_the_load(llama_dir: Path) -> None:
    from transformers import LlamaConfig

    config = LlamaConfig.from_pretrained(llama_dir)
    assert hf_capacity.bytes_per_token(config, 2) == TINY_BYTES_PER_TOKEN // 2
    with pytest.raises(base.Unrecoverable, match="raise the engine option kv_cache_mb") as caught:
        hf_capacity.capacity(10**6, 2**20, 4096, None, str(llama_dir))
    assert caught.value.reason == "InvalidConfig"


def test_the_batching_options_reach_the_engine(tmp_path: Path) -> None:
    spec = EngineSpec(kind="transformers", options={"kv_cache_mb": 512, "max_total_tokens": 2048})
    engine = engines.create(spec, tmp_path)

    assert isinstance(engine, TransformersEngine)
    assert (engine.kv_cache_mb, engine.max_total_tokens) == (512, 2048)
    with pytest.raises(ValueError, match=r"option 'kv_cache_mb' must be an integer >= 1"):
        engines.create(EngineSpec(kind="transformers", options={"kv_cache_mb": 0}))


def test_smollm2_s_kv_cache_takes_45_kib_per_token_in_float32() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         hidden_size=576, head_dim=64)
    assert hf_capacity.bytes_per_token(config, torch.float32.itemsize) == 30 * 3 * 64 * 2 * 4
