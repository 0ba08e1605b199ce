"""The ``transformers`` engine on tiny random models built by the test, checked against the same
models called directly: greedy decoding against ``generate``, labels against the softmax of the
logits, embeddings against sentence-transformers and hand pooling. The real SmolLM2 GGUF file is
exercised in ``tests/worker/test_engines_real.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch

from tests.engines import tiny_models
from tests.engines.streams import batch_of, collect, text_of, wait_until_idle
from uplion.models import EngineSpec
from uplion.worker import engines
from uplion.worker.engines import base, devices, gguf_cache
from uplion.worker.engines.transformers_engine import TransformersEngine

session_loop = pytest.mark.asyncio(loop_scope="session")
GREEDY = base.GenerationParams(temperature=0.0, max_tokens=12)
CHAT = [{"role": "user", "content": "the cat sat on the mat"}]
TEXTS = ["the cat sat on the mat", "a big red car", "the quick fox jumps over the lazy dog sun"]


async def loaded(path: Path, **options: Any) -> TransformersEngine:
    """The engine on the CPU, in float32 unless a dtype is named (``auto`` decodes in bfloat16
    on a CPU that has it, and answers are compared with transformers' own in float32)."""
    options.setdefault("dtype", "float32")
    engine = TransformersEngine(base.Artifact(path=path, device="cpu"), **options)
    await engine.load()
    return engine


def reference(folder: Path) -> tuple[Any, Any]:
    """The model and tokenizer, loaded straight with transformers."""
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def reference_generation(folder: Path, auto: str, ids: list[int], count: int) -> list[int]:
    import transformers

    model = getattr(transformers, auto).from_pretrained(folder).eval()
    output = model.generate(
        torch.tensor([ids]), do_sample=False, max_new_tokens=count, pad_token_id=tiny_models.PAD
    )
    return [int(token) for token in output[0]]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    yield root
    shutil.rmtree(root)


@pytest.fixture(scope="session")
def causal_dir(models_dir: Path) -> Path:
    return tiny_models.causal_lm(models_dir / "llama")


@pytest.fixture(scope="session")
def seq2seq_dir(models_dir: Path) -> Path:
    return tiny_models.seq2seq(models_dir / "t5")


@pytest.fixture(scope="session")
def classifier_dir(models_dir: Path) -> Path:
    return tiny_models.classifier(models_dir / "classifier")


@pytest.fixture(scope="session")
def encoder_dir(models_dir: Path) -> Path:
    return tiny_models.encoder(models_dir / "bert")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def causal(causal_dir: Path) -> AsyncIterator[TransformersEngine]:
    engine = await loaded(causal_dir, default_max_tokens=6)
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def t5(seq2seq_dir: Path) -> AsyncIterator[TransformersEngine]:
    engine = await loaded(seq2seq_dir)
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def classifier(classifier_dir: Path) -> AsyncIterator[TransformersEngine]:
    engine = await loaded(classifier_dir)
    yield engine
    await engine.close()


# Causal LM


@session_loop
async def test_causal_lm_reports_what_it_serves(causal: TransformersEngine) -> None:
    info = causal.info
    assert (info.platform, info.serves, info.device) == ("pytorch", "text-generation", "cpu")
    assert info.context_length == 4096
    assert info.extra == {"architecture": "LlamaForCausalLM", "format": "transformers",
                          "dtype": "float32"}
    assert [t.as_json() for t in info.inputs] == [
        {"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
    assert [t.as_json() for t in info.outputs] == [
        {"name": "text_output", "datatype": "BYTES", "shape": [-1]}]


@session_loop
async def test_greedy_chat_is_generate_through_the_chat_template(
    causal: TransformersEngine, causal_dir: Path
) -> None:
    _, words = reference(causal_dir)
    prompt = words(words.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"]
    expected = reference_generation(causal_dir, "AutoModelForCausalLM", prompt, 12)[len(prompt):]

    deltas = await collect(causal.chat(CHAT, GREEDY))

    assert text_of(deltas) == words.decode(expected)
    assert len([d for d in deltas if d.text]) >= 3, "the answer should arrive in several deltas"
    assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["length"]
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (
        len(prompt), 12)


@session_loop
async def test_greedy_completion_is_generate(causal: TransformersEngine, causal_dir: Path) -> None:
    _, words = reference(causal_dir)
    prompt = words("the cat sat")["input_ids"]
    expected = reference_generation(causal_dir, "AutoModelForCausalLM", prompt, 12)[len(prompt):]

    deltas = await collect(causal.complete("the cat sat", GREEDY))

    assert text_of(deltas) == words.decode(expected)


@session_loop
async def test_the_text_is_cut_at_the_first_stop_string(causal: TransformersEngine) -> None:
    full = text_of(await collect(causal.complete("the cat sat", GREEDY))).split(" ")
    at = next(i for i in range(2, len(full)) if full[i] not in full[:i])

    deltas = await collect(
        causal.complete("the cat sat", dataclasses.replace(GREEDY, stop=[f" {full[at]}", "zzz"]))
    )

    assert text_of(deltas) == " ".join(full[:at])
    assert deltas[-1].finish_reason == "stop"


@session_loop
async def test_sampling_is_reproducible_with_a_seed(causal: TransformersEngine) -> None:
    params = base.GenerationParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=16)
    first, second = [text_of(await collect(causal.chat(CHAT, params))) for _ in range(2)]
    other = text_of(await collect(causal.chat(CHAT, dataclasses.replace(params, seed=8))))
    greedy = text_of(await collect(causal.chat(CHAT, dataclasses.replace(GREEDY, max_tokens=16))))

    assert first == second
    assert len({first, other, greedy}) == 3


@session_loop
async def test_max_tokens_is_the_request_s_else_the_engine_default(
    causal: TransformersEngine,
) -> None:
    # Greedy: sampling could pick the end of text (its logit is pinned at zero, not -inf).
    asked = await collect(causal.complete("the cat", dataclasses.replace(GREEDY, max_tokens=3)))
    default = await collect(causal.complete("the cat", base.GenerationParams(temperature=0)))

    assert [asked[-1].usage, default[-1].usage] == [
        base.protocol.Usage(prompt_tokens=2, completion_tokens=3),
        base.protocol.Usage(prompt_tokens=2, completion_tokens=6),
    ]
    assert asked[-1].finish_reason == default[-1].finish_reason == "length"


@session_loop
async def test_a_prompt_longer_than_the_context_is_a_400(causal: TransformersEngine) -> None:
    with pytest.raises(base.EngineError) as caught:
        await collect(causal.complete("the " * 4096, GREEDY))

    error = caught.value.error
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "prompt")
    assert "4096 tokens long" in error.message


@session_loop
async def test_generation_stops_at_the_end_of_the_context(causal: TransformersEngine) -> None:
    deltas = await collect(causal.complete(
        "the " * 4090, base.GenerationParams(max_tokens=50, temperature=0.0)))

    assert deltas[-1].usage == base.protocol.Usage(prompt_tokens=4090, completion_tokens=6)
    assert deltas[-1].finish_reason == "length"


@session_loop
async def test_chat_needs_a_chat_template(causal_dir: Path, models_dir: Path) -> None:
    bare = tiny_models.causal_lm(models_dir / "llama-without-template", chat_template=None)
    engine = await loaded(bare)
    try:
        with pytest.raises(base.EngineError) as caught:
            await collect(engine.chat(CHAT, GREEDY))
        completion = await collect(engine.complete("the cat", GREEDY))
    finally:
        await engine.close()

    error = caught.value.error
    assert (error.status, error.code, error.param) == (400, "chat_template_missing", "messages")
    assert "no chat template" in error.message
    assert completion[-1].finish_reason == "length"


@session_loop
async def test_a_text_model_does_not_embed_or_classify(causal: TransformersEngine) -> None:
    with pytest.raises(base.Unsupported, match="embeddings"):
        await causal.embed(["x"])
    with pytest.raises(base.Unsupported, match="classification"):
        await causal.classify(["x"])


@session_loop
async def test_closing_the_stream_stops_generation(causal: TransformersEngine) -> None:
    with forward_passes(causal) as steps:
        stream = causal.complete("the cat", base.GenerationParams(max_tokens=4000))
        assert isinstance(stream, AsyncGenerator)
        await anext(stream)
        assert batch_of(causal).rows == 1

        await stream.aclose()

        wait_until_idle(causal)
        assert steps() < 4000


@session_loop
async def test_cancelling_the_consumer_stops_generation(causal: TransformersEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in causal.complete("the cat", base.GenerationParams(max_tokens=4000)):
            started.set()

    with forward_passes(causal) as steps:
        task = asyncio.create_task(consume())
        await started.wait()
        assert batch_of(causal).rows == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        wait_until_idle(causal)
        assert steps() < 4000


@session_loop
async def test_closing_the_engine_stops_its_generations(causal_dir: Path) -> None:
    engine = await loaded(causal_dir)
    batch = batch_of(engine)
    stream = engine.complete("the cat", base.GenerationParams(max_tokens=4000))
    await anext(stream)
    assert batch.rows == 1

    with forward_passes(engine) as steps:
        await engine.close()

        assert batch.idle.wait(10.0), "generation kept running"
        assert batch.rows == 0
        assert steps() <= 1
    with pytest.raises(RuntimeError, match="not loaded"):
        engine.complete("the cat", GREEDY)


@session_loop
async def test_concurrent_generations_match_solo_ones(causal: TransformersEngine) -> None:
    prompts = ["the cat sat", "a big red car on the road"]
    solo = [text_of(await collect(causal.complete(p, GREEDY))) for p in prompts]

    together = await asyncio.gather(*(collect(causal.complete(p, GREEDY)) for p in prompts))

    assert [text_of(deltas) for deltas in together] == solo


@contextlib.contextmanager
def forward_passes(engine: TransformersEngine) -> Iterator[Callable[[], int]]:
    """Counts the forward passes (generated tokens) of the engine's model meanwhile."""
    calls = [0]

    def counted(*_: Any) -> None:
        calls[0] += 1

    hook = engine._model.register_forward_hook(counted)
    try:
        yield lambda: calls[0]
    finally:
        hook.remove()


# Sequence-to-sequence


@session_loop
async def test_seq2seq_completion_is_generate_on_the_input_text(
    t5: TransformersEngine, seq2seq_dir: Path
) -> None:
    _, words = reference(seq2seq_dir)
    source = words("the quick fox jumps over the lazy dog")["input_ids"]
    expected = reference_generation(seq2seq_dir, "AutoModelForSeq2SeqLM", source, 12)[1:]

    deltas = await collect(t5.complete("the quick fox jumps over the lazy dog", GREEDY))

    assert text_of(deltas) == words.decode(expected)
    assert len([d for d in deltas if d.text]) >= 3
    assert deltas[-1].usage == base.protocol.Usage(prompt_tokens=len(source), completion_tokens=12)
    assert t5.info.serves == "text-generation"
    assert t5.info.extra["architecture"] == "T5ForConditionalGeneration"


@session_loop
async def test_seq2seq_chat_answers_the_last_user_message(t5: TransformersEngine) -> None:
    messages = [
        {"role": "system", "content": "the sun"},
        {"role": "user", "content": "a red car"},
        {"role": "assistant", "content": "blue"},
        {"role": "user", "content": [{"type": "text", "text": "the quick fox"}]},
    ]

    chat = await collect(t5.chat(messages, GREEDY))
    completion = await collect(t5.complete("the quick fox", GREEDY))

    assert text_of(chat) == text_of(completion)
    assert chat[-1].usage == completion[-1].usage


# Classification


@session_loop
async def test_classification_is_the_softmax_of_the_logits(
    classifier: TransformersEngine, classifier_dir: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    words = AutoTokenizer.from_pretrained(classifier_dir)

    result = await classifier.classify(TEXTS)

    lengths = 0
    for text, ranked in zip(TEXTS, result.labels, strict=True):
        inputs = words(text, return_tensors="pt")
        lengths += inputs["input_ids"].shape[1]
        with torch.inference_mode():
            expected = torch.softmax(model(**inputs).logits[0], dim=-1).tolist()
        scores = dict(ranked)
        assert sorted(scores) == ["negative", "neutral", "positive"]
        assert np.allclose([scores[tiny_models.LABELS[i]] for i in range(3)], expected, atol=1e-5)
        assert [s for _, s in ranked] == sorted(scores.values(), reverse=True)
    assert result.prompt_tokens == lengths
    assert len({ranked[0][0] for ranked in result.labels}) > 1, "a random model, varied answers"
    assert (await classifier.classify([])).labels == []


@session_loop
async def test_a_classifier_reports_its_tensors(classifier: TransformersEngine) -> None:
    info = classifier.info
    assert (info.serves, info.context_length) == ("classification", 128)
    assert [t.as_json() for t in info.inputs] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [t.as_json() for t in info.outputs] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP32", "shape": [-1]},
    ]
    with pytest.raises(base.Unsupported, match="chat"):
        classifier.chat(CHAT, GREEDY)


@session_loop
async def test_multi_label_classification_scores_each_label_with_a_sigmoid(
    models_dir: Path,
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tiny_models.classifier(models_dir / "multi-label", multi_label=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    inputs = AutoTokenizer.from_pretrained(folder)(TEXTS[0], return_tensors="pt")
    with torch.inference_mode():
        expected = torch.sigmoid(model(**inputs).logits[0]).tolist()
    engine = await loaded(folder)
    try:
        (ranked,) = (await engine.classify(TEXTS[:1])).labels
    finally:
        await engine.close()

    scores = dict(ranked)
    assert np.allclose([scores[tiny_models.LABELS[i]] for i in range(3)], expected, atol=1e-5)


@session_loop
async def test_max_length_truncates_the_texts(classifier_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    inputs = AutoTokenizer.from_pretrained(classifier_dir)(
        TEXTS[2], return_tensors="pt", truncation=True, max_length=4
    )
    with torch.inference_mode():
        expected = torch.softmax(model(**inputs).logits[0], dim=-1).tolist()
    engine = await loaded(classifier_dir, max_length=4)
    try:
        result = await engine.classify(TEXTS)
    finally:
        await engine.close()

    scores = dict(result.labels[2])
    assert np.allclose([scores[tiny_models.LABELS[i]] for i in range(3)], expected, atol=1e-5)
    assert result.prompt_tokens == 4 * len(TEXTS)
    assert engine.info.context_length == 4


# Embeddings


@session_loop
@pytest.mark.parametrize("mode", ["mean", "cls", "max", "lasttoken"])
async def test_sentence_transformers_folders_embed_as_sentence_transformers_does(
    encoder_dir: Path, models_dir: Path, mode: str
) -> None:
    from sentence_transformers import SentenceTransformer

    folder = tiny_models.sentence_transformer(models_dir / f"st-{mode}", encoder_dir, mode)
    expected = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    engine = await loaded(folder)
    try:
        result = await engine.embed(TEXTS)
    finally:
        await engine.close()

    assert np.allclose(result.vectors, expected, atol=1e-5)
    assert engine.info.serves == "embedding"
    assert engine.info.embedding_dimensions == 32
    assert engine.info.context_length == 16  # the folder's max_seq_length
    assert engine.info.extra["format"] == "sentence-transformers"
    assert [t.as_json() for t in engine.info.outputs] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}]


@session_loop
async def test_a_plain_encoder_embeds_with_normalized_mean_pooling(encoder_dir: Path) -> None:
    model, words = reference(encoder_dir)
    engine = await loaded(encoder_dir, task="embedding")
    try:
        result = await engine.embed(TEXTS)
    finally:
        await engine.close()

    for text, vector in zip(TEXTS, result.vectors, strict=True):
        inputs = words(text, return_tensors="pt")
        with torch.inference_mode():
            mean = model(**inputs).last_hidden_state[0].mean(dim=0)
        assert np.allclose(vector, (mean / mean.norm()).tolist(), atol=1e-5)
    assert result.prompt_tokens == sum(len(words(text)["input_ids"]) for text in TEXTS)
    assert engine.info.extra["architecture"] == "BertModel"


# Loading


@session_loop
async def test_an_encoder_with_no_task_is_refused_with_the_option_to_set(
    encoder_dir: Path,
) -> None:
    with pytest.raises(base.Unrecoverable, match=r"BertModel.*set the engine option task") as err:
        await loaded(encoder_dir)
    assert err.value.reason == "UnsupportedModel"


@session_loop
async def test_a_folder_with_no_model_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(base.Unrecoverable, match=rf"{tmp_path} holds no config.json") as caught:
        await loaded(tmp_path)
    assert caught.value.reason == "UnrecognizedArtifact"


@session_loop
async def test_a_sentence_transformers_folder_with_a_dense_module_is_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "modules.json").write_text(
        '[{"path": "", "type": "sentence_transformers.models.Transformer"},'
        ' {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]'
    )
    with pytest.raises(base.Unrecoverable, match=r"modules.json lists a .*Dense module"):
        await loaded(tmp_path)


@session_loop
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
async def test_cuda_without_a_gpu_is_device_unavailable(classifier_dir: Path) -> None:
    engine = TransformersEngine(base.Artifact(path=classifier_dir, device="cuda"))
    with pytest.raises(base.Unrecoverable, match="no CUDA GPU is visible") as caught:
        await engine.load()
    assert caught.value.reason == "DeviceUnavailable"
    assert devices.resolve_device("auto") == "cpu"


@session_loop
async def test_the_dtype_option_loads_the_weights_in_that_dtype(classifier_dir: Path) -> None:
    engine = await loaded(classifier_dir, dtype="bfloat16")
    try:
        result = await engine.classify(TEXTS[:1])
    finally:
        await engine.close()

    assert engine.info.extra["dtype"] == "bfloat16"
    assert abs(sum(score for _, score in result.labels[0]) - 1.0) < 1e-3


def test_create_builds_the_transformers_engine_from_its_options(tmp_path: Path) -> None:
    spec = EngineSpec(kind="transformers", device="cpu", options={
        "task": "embedding", "threads": 1, "dtype": "float32", "max_length": 64,
        "default_max_tokens": 32,
    })
    engine = engines.create(spec, tmp_path)

    assert isinstance(engine, TransformersEngine)
    assert (engine.artifact.path, engine.artifact.device) == (tmp_path, "cpu")
    assert (engine.task, engine.threads, engine.dtype, engine.max_length) == (
        "embedding", 1, "float32", 64)
    assert engine.default_max_tokens == 32


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "summarize"}, r"option 'task' must be one of text-generation, embedding"),
        ({"dtype": "int8"}, r"option 'dtype' must be one of auto, float32"),
        ({"max_length": 0}, r"option 'max_length' must be an integer >= 1"),
        ({"cache_dir": "/tmp"}, r"'transformers' has no option 'cache_dir'"),
    ],
)
def test_create_rejects_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        engines.create(EngineSpec(kind="transformers", options=options))


def test_a_changed_gguf_file_gets_a_new_conversion_folder(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF one")
    first = gguf_cache.cached_folder(gguf, tmp_path / "cache")
    assert gguf_cache.cached_folder(gguf, tmp_path / "cache") == first
    os.utime(gguf, ns=(1, 1))
    touched = gguf_cache.cached_folder(gguf, tmp_path / "cache")
    gguf.write_bytes(b"GGUF two!")
    os.utime(gguf, ns=(1, 1))

    assert len({first, touched, gguf_cache.cached_folder(gguf, tmp_path / "cache")}) == 3
    assert first.parent == tmp_path / "cache"
    assert first.name.startswith("model-")


async def test_loading_leaves_the_hub_online_for_later_fetches(
    causal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engines read local files only, without switching the whole process offline: on one
    machine a model deployed later from hf:// is fetched by the same process."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    engine = await loaded(causal_dir)
    try:
        assert engine.info.serves == "text-generation"
        assert "HF_HUB_OFFLINE" not in os.environ
        assert "TRANSFORMERS_OFFLINE" not in os.environ
    finally:
        await engine.close()
