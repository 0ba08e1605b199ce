"""Engines by kind: ``create`` turns a model's engine spec into an engine, not yet loaded.

Kinds: ``test-echo`` (protocol tests), ``smollm2`` (chat and completions), ``sentence-transformers``
and ``onnx-embedding`` (embeddings), ``openai-upstream`` (an OpenAI-compatible provider, over a
pool of accounts). Options are checked here, so that a typo in a models file
fails when the worker starts rather than being ignored. The engine modules import PyTorch,
transformers, sentence-transformers and onnxruntime only in ``load``: importing this package, or
running ``test-echo``, needs none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from uplion.models import EngineSpec
from uplion.worker.engines import base, detect
from uplion.worker.engines.echo import EchoEngine
from uplion.worker.engines.onnx_embedding import OnnxEmbeddingEngine
from uplion.worker.engines.openai_upstream import OpenAIUpstreamEngine
from uplion.worker.engines.sentence_embedding import SentenceTransformerEngine
from uplion.worker.engines.smollm import SmolLM2Engine

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

    def _invalid(self, name: str, value: Any, expected: str) -> ValueError:
        return ValueError(
            f"engine {self._kind!r}: option {name!r} must be {expected}, not {value!r}"
        )


def _test_echo(options: _Options, artifact: base.Artifact) -> base.Engine:
    return EchoEngine(token_delay_s=options.number("token_delay_s", 0.0))


def _smollm2(options: _Options, artifact: base.Artifact) -> base.Engine:
    return SmolLM2Engine(
        cache_dir=options.path("cache_dir"),
        default_max_tokens=options.count("default_max_tokens", 256),
        threads=options.optional_count("threads"),
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


_BUILDERS: dict[
    str, tuple[Callable[[_Options, base.Artifact], base.Engine], frozenset[str]]
] = {
    "test-echo": (_test_echo, frozenset({"token_delay_s"})),
    "smollm2": (_smollm2, frozenset({"cache_dir", "default_max_tokens", "threads"})),
    "sentence-transformers": (_sentence_transformers, frozenset({"path", "batch_size"})),
    "onnx-embedding": (
        _onnx_embedding,
        frozenset({"path", "threads", "batch_size", "max_length"}),
    ),
    "openai-upstream": (
        _openai_upstream,
        frozenset({
            "base_url", "model", "accounts", "timeout_s", "max_attempts", "retest_interval_s",
        }),
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
