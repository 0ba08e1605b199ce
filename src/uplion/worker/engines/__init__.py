"""Engines by kind: ``create`` turns a model's engine spec into an engine, not yet loaded.

Kinds: ``test-echo`` (protocol tests), ``transformers`` (any transformers model or GGUF file: text
generation, embeddings, classification), ``sentence-transformers``
and ``onnx-embedding`` (embeddings), ``onnx``, ``sklearn``, ``xgboost`` and
``lightgbm`` (KServe v2 tensors), ``openai-upstream`` (an OpenAI-compatible provider, over a
pool of accounts), ``openai-server`` and its preset ``vllm`` (an OpenAI-compatible server run
as the worker's child). Options are checked here, so that a typo in a models file
fails when the worker starts rather than being ignored. The engine modules import PyTorch,
transformers, sentence-transformers and onnxruntime only in ``load``: importing this package, or
running ``test-echo``, needs none of them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from uplion.models import EngineSpec
from uplion.worker.engines import base, detect, devices, hf_loading
from uplion.worker.engines.classic import ClassicEngine, Kind
from uplion.worker.engines.echo import EchoEngine
from uplion.worker.engines.onnx_embedding import OnnxEmbeddingEngine
from uplion.worker.engines.onnx_tensor import OnnxTensorEngine
from uplion.worker.engines.openai_server import OpenAIServerEngine, vllm_engine
from uplion.worker.engines.openai_upstream import OpenAIUpstreamEngine
from uplion.worker.engines.sentence_embedding import SentenceTransformerEngine
from uplion.worker.engines.transformers_engine import TransformersEngine

__all__ = ["KINDS", "check", "create"]


class _Options:
    """An engine's options, checked for unknown names and read with type checks."""

    def __init__(self, kind: str, options: Mapping[str, Any], known: frozenset[str]) -> None:
        for name in options:
            if name not in known:
                raise ValueError(
                    f"engine {kind!r} has no option {name!r}; "
                    f"its options are: {', '.join(sorted(known)) or 'none'}"
                )
        self._kind = kind
        self._options = options
        self.optional_count("default_max_tokens")  # read by the gateway: checked for every kind

    def number(self, name: str, default: float) -> float:
        value = self._options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self._invalid(name, value, "a number >= 0")
        return float(value)

    def count(self, name: str, default: int) -> int:
        value = self.optional_count(name)
        return default if value is None else value

    def optional_count(self, name: str) -> int | None:
        value = self._options.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._invalid(name, value, "an integer >= 1")
        return value

    def path(self, name: str) -> Path | None:
        value = self._options.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self._invalid(name, value, "a path")
        return Path(value).expanduser()

    def text(self, name: str) -> str:
        """A string option; ``""`` when absent (the engine says at load if it needs one)."""
        value = self._options.get(name, "")
        if not isinstance(value, str):
            raise self._invalid(name, value, "a string")
        return value

    def mappings(self, name: str) -> list[Mapping[str, Any]]:
        """A list of mappings (``accounts``); empty when absent. The engine checks their fields."""
        value = self._options.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            raise self._invalid(name, value, "a list of mappings")
        return value

    def words(self, name: str) -> list[str]:
        """A command line: a list of words, or one string split like a shell's (numbers become
        words); empty when absent."""
        value = self._options.get(name, [])
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as error:
                raise self._invalid(name, value, f"a command line ({error})") from None
        if not isinstance(value, list) or not all(_scalar(word) for word in value):
            raise self._invalid(name, value, "a list of words or a command line")
        return [str(word) for word in value]

    def text_map(self, name: str) -> dict[str, str]:
        """Names to strings (``env``; numbers become strings); empty when absent."""
        value = self._options.get(name, {})
        if not isinstance(value, Mapping) or not all(
            isinstance(key, str) and _scalar(item) for key, item in value.items()
        ):
            raise self._invalid(name, value, "a mapping of names to strings")
        return {key: str(item) for key, item in value.items()}

    def _invalid(self, name: str, value: Any, expected: str) -> ValueError:
        return ValueError(
            f"engine {self._kind!r}: option {name!r} must be {expected}, not {value!r}"
        )


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _test_echo(options: _Options, artifact: base.Artifact) -> base.Engine:
    return EchoEngine(
        token_delay_s=options.number("token_delay_s", 0.0), tensors=options.text("tensors")
    )


def _transformers(options: _Options, artifact: base.Artifact) -> base.Engine:
    named_task, dtype = options.text("task"), options.text("dtype") or "auto"
    for name, value, allowed in [
        ("task", named_task or None, hf_loading.TASKS), ("dtype", dtype, devices.DTYPES)
    ]:
        if value is not None and value not in allowed:
            raise ValueError(
                f"engine 'transformers': option {name!r} must be one of {', '.join(allowed)}, "
                f"not {value!r}"
            )
    task = next((t for t in hf_loading.TASKS if t == named_task), None)
    return TransformersEngine(
        artifact,
        task=task,
        default_max_tokens=options.count("default_max_tokens", 256),
        threads=options.optional_count("threads"),
        dtype=dtype,
        max_length=options.optional_count("max_length"),
        kv_cache_mb=options.optional_count("kv_cache_mb"),
        max_total_tokens=options.optional_count("max_total_tokens"),
    )


def _sentence_transformers(options: _Options, artifact: base.Artifact) -> base.Engine:
    return SentenceTransformerEngine(
        path=options.path("path") or artifact.path, batch_size=options.count("batch_size", 32)
    )


def _onnx_embedding(options: _Options, artifact: base.Artifact) -> base.Engine:
    return OnnxEmbeddingEngine(
        path=options.path("path") or artifact.path,
        threads=options.optional_count("threads"),
        batch_size=options.count("batch_size", 32),
        max_length=options.count("max_length", 256),
    )


def _openai_upstream(options: _Options, artifact: base.Artifact) -> base.Engine:
    return OpenAIUpstreamEngine(
        base_url=options.text("base_url"),
        model=options.text("model"),
        accounts=options.mappings("accounts"),
        timeout_s=options.number("timeout_s", 60.0),
        max_attempts=options.count("max_attempts", 4),
        retest_interval_s=options.number("retest_interval_s", 30.0),
    )


def _onnx(options: _Options, artifact: base.Artifact) -> base.Engine:
    return OnnxTensorEngine(artifact, threads=options.optional_count("threads"))


def _classic(kind: Kind) -> Callable[[_Options, base.Artifact], base.Engine]:
    """The builder of a classic ML kind (they take no options)."""

    def build(options: _Options, artifact: base.Artifact) -> base.Engine:
        return ClassicEngine(kind, artifact)

    return build


def _openai_server(options: _Options, artifact: base.Artifact) -> base.Engine:
    return OpenAIServerEngine(
        options.words("command"), artifact, port=options.optional_count("port"),
        ready_path=options.text("ready_path") or "/v1/models",
        ready_timeout_s=options.number("ready_timeout_s", 600.0), model=options.text("model"),
        env=options.text_map("env"), serves=options.text("serves"),
        api_key_env=options.text("api_key_env"), timeout_s=options.number("timeout_s", 120.0),
    )


def _vllm(options: _Options, artifact: base.Artifact) -> base.Engine:
    return vllm_engine(
        artifact, model=options.text("model"), args=options.words("args"),
        gpu_memory_utilization=options.number("gpu_memory_utilization", 0.9),
        max_model_len=options.optional_count("max_model_len"),
        tensor_parallel_size=options.optional_count("tensor_parallel_size"),
        dtype=options.text("dtype"), port=options.optional_count("port"),
        ready_timeout_s=options.number("ready_timeout_s", 600.0), env=options.text_map("env"),
        serves=options.text("serves"), timeout_s=options.number("timeout_s", 120.0),
    )


# default_max_tokens: the output cap the gateway applies when a request names none (it reads the
# option from the model spec; the engine gets the cap in each task).
_SERVER_OPTIONS = frozenset({
    "port", "ready_timeout_s", "model", "env", "serves", "timeout_s", "default_max_tokens",
})

_BUILDERS: dict[
    str, tuple[Callable[[_Options, base.Artifact], base.Engine], frozenset[str]]
] = {
    "test-echo": (_test_echo, frozenset({"token_delay_s", "tensors"})),
    "transformers": (
        _transformers,
        frozenset({
            "task", "default_max_tokens", "threads", "dtype", "max_length", "kv_cache_mb",
            "max_total_tokens",
        }),
    ),
    "sentence-transformers": (_sentence_transformers, frozenset({"path", "batch_size"})),
    "onnx-embedding": (
        _onnx_embedding,
        frozenset({"path", "threads", "batch_size", "max_length"}),
    ),
    "onnx": (_onnx, frozenset({"threads"})),
    "sklearn": (_classic("sklearn"), frozenset()),
    "xgboost": (_classic("xgboost"), frozenset()),
    "lightgbm": (_classic("lightgbm"), frozenset()),
    "openai-upstream": (
        _openai_upstream,
        frozenset({
            "base_url", "model", "accounts", "timeout_s", "max_attempts", "retest_interval_s",
            "default_max_tokens",
        }),
    ),
    "openai-server": (
        _openai_server, _SERVER_OPTIONS | {"command", "ready_path", "api_key_env"},
    ),
    "vllm": (
        _vllm,
        _SERVER_OPTIONS | {
            "args", "gpu_memory_utilization", "max_model_len", "tensor_parallel_size", "dtype",
        },
    ),
}

KINDS: tuple[str, ...] = ("auto", *_BUILDERS)
"""The engine kinds ``create`` knows (``auto``: the artifact says, see ``detect``)."""


def check(spec: EngineSpec) -> None:
    """``ValueError`` for an unknown kind or option, before anything is fetched or loaded."""
    if spec.kind == "auto":
        if spec.options:
            raise ValueError("engine kind 'auto' takes no options: name the engine's kind")
        return
    entry = _BUILDERS.get(spec.kind)
    if entry is None:
        raise ValueError(f"unknown engine kind {spec.kind!r}; known kinds: {', '.join(KINDS)}")
    _Options(spec.kind, spec.options, entry[1])


def create(spec: EngineSpec, path: Path | None = None) -> base.Engine:
    """The engine a spec names, for the artifact fetched into ``path``, configured but not
    loaded (call ``await engine.load()``). ``auto`` picks the kind from the artifact;
    ``ValueError`` for an unknown kind or option, ``base.Unrecoverable`` for an artifact no
    engine recognizes."""
    kind = spec.kind
    if kind == "auto":
        if path is None:
            raise ValueError("engine kind 'auto' needs a fetched artifact to look at")
        kind = detect.engine_kind(path)
    entry = _BUILDERS.get(kind)
    if entry is None:
        raise ValueError(f"unknown engine kind {kind!r}; known kinds: {', '.join(KINDS)}")
    build, known = entry
    artifact = base.Artifact(path=path, device=spec.device, trust_pickle=spec.trust_pickle)
    return build(_Options(kind, spec.options, known), artifact)
