"""What a transformers artifact holds and how to load it: the folder, the task it serves (from its
configuration, or the ``task`` option), and the model and tokenizer on a device.

An artifact is a transformers folder (``config.json``), a sentence-transformers folder
(``modules.json``), or a ``.gguf`` file (or a folder holding one), which is converted once into a
cached transformers folder. Everything loads from local files only, and no code shipped with a
model runs (``trust_remote_code`` stays off).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from uplion.worker.engines import base, gguf_cache, hf_pooling

Task = Literal["text-generation", "embedding", "classification"]
TASKS: tuple[Task, ...] = ("text-generation", "embedding", "classification")

_CONTEXT_FIELDS = (
    "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
    "max_seq_len",
)
_NO_LIMIT = 1_000_000
"""Tokenizers without a known limit say ``model_max_length`` is about 1e30."""


@dataclass(frozen=True, slots=True)
class Plan:
    """An artifact looked at, before its weights are read."""

    folder: Path
    """The transformers folder: ``config.json``, weights, tokenizer."""
    source_format: Literal["transformers", "sentence-transformers", "gguf"]
    task: Task
    encoder_decoder: bool
    architecture: str
    config: Any
    pooling: hf_pooling.Pooling | None
    """How to pool token vectors (embedding only)."""


def plan(path: Path | None, task: Task | None) -> Plan:
    """Look at the artifact at ``path``; ``base.Unrecoverable`` naming the path for one this
    engine cannot serve."""
    if path is None:
        raise base.Unrecoverable(
            "InvalidConfig", "the transformers engine needs a model source (a folder or a file)"
        )
    if not path.exists():
        raise base.Unrecoverable("InvalidArtifact", f"the model artifact {path} does not exist")
    folder, source_format, sentence = _folder(path)
    config = _config(folder)
    architecture = str((getattr(config, "architectures", None) or [config.model_type])[0])
    pooling = sentence.pooling if sentence is not None else None
    chosen = task or _task(folder, config, architecture, sentence is not None)
    if chosen == "embedding" and pooling is None:
        pooling = hf_pooling.Pooling()
    encoder_decoder = chosen == "text-generation" and bool(config.is_encoder_decoder)
    return Plan(folder, source_format, chosen, encoder_decoder, architecture, config, pooling)


def load(plan: Plan, device: str, dtype: Any) -> tuple[Any, Any]:
    """The model (in eval mode, on ``device``) and its tokenizer."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    if plan.task == "text-generation":
        auto: Any = AutoModelForSeq2SeqLM if plan.encoder_decoder else AutoModelForCausalLM
    elif plan.task == "classification":
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModel
    try:
        model = auto.from_pretrained(plan.folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(plan.folder, local_files_only=True)
    except (ValueError, OSError, KeyError, ImportError) as error:
        raise base.Unrecoverable(
            "UnsupportedModel",
            f"cannot load {plan.architecture} from {plan.folder} for {plan.task}: {error}",
        ) from error
    model.to(device)
    model.eval()
    return model, tokenizer


def context_length(config: Any, tokenizer: Any) -> int | None:
    """The longest input the model takes, from its configuration or else its tokenizer."""
    text_config = config.get_text_config()
    for name in _CONTEXT_FIELDS:
        value = getattr(text_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return tokenizer_limit(tokenizer)


def tokenizer_limit(tokenizer: Any) -> int | None:
    """The tokenizer's ``model_max_length``, unless it is the "no limit" placeholder."""
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < _NO_LIMIT else None


def end_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The tokens that end a text: the generation config's and the tokenizer's end of text."""
    ends = model.generation_config.eos_token_id
    found = set(ends if isinstance(ends, list) else [ends])
    found.add(tokenizer.eos_token_id)
    return frozenset(int(token) for token in found if token is not None)


def decoder_start(plan: Plan, model: Any) -> int | None:
    """The first decoder input of an encoder-decoder model; ``None`` for a causal LM."""
    if not plan.encoder_decoder:
        return None
    start = model.generation_config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    if start is None:
        raise base.Unrecoverable(
            "UnsupportedModel",
            f"{plan.folder}: the {plan.architecture} model names no decoder_start_token_id",
        )
    return int(start)


def keeps_logits(model: Any) -> bool:
    """Whether the model can compute the last position's logits only (``logits_to_keep``)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _folder(
    path: Path,
) -> tuple[Path, Literal["transformers", "sentence-transformers", "gguf"],
           hf_pooling.SentenceFolder | None]:
    path = path.resolve()  # a link `uplion fetch-model --link` made has no file name suffix
    if path.is_file():
        if path.suffix == ".gguf":
            return gguf_cache.converted(path), "gguf", None
        raise base.Unrecoverable(
            "UnrecognizedArtifact",
            f"{path} is a file the transformers engine does not load (a .gguf file, or a folder "
            "with config.json or modules.json)",
        )
    sentence = hf_pooling.sentence_folder(path)
    if sentence is not None:
        return sentence.model_dir, "sentence-transformers", sentence
    if (path / "config.json").is_file():
        return path, "transformers", None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return gguf_cache.converted(ggufs[0]), "gguf", None
    found = ", ".join(p.name for p in ggufs) if ggufs else "no config.json, modules.json or .gguf"
    raise base.Unrecoverable(
        "UnrecognizedArtifact",
        f"the transformers engine needs a model folder with config.json, a sentence-transformers "
        f"folder or one .gguf file; {path} holds {found}",
    )


def _config(folder: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError) as error:
        raise base.Unrecoverable(
            "UnsupportedModel", f"cannot read the model configuration in {folder}: {error}"
        ) from error


def _task(folder: Path, config: Any, architecture: str, sentence: bool) -> Task:
    """What the artifact serves, from its layout and architecture."""
    from transformers.models.auto import modeling_auto

    if sentence:
        return "embedding"
    if architecture.endswith("ForSequenceClassification"):
        return "classification"
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "text-generation"
    seq2seq = modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    if config.is_encoder_decoder and config.model_type in seq2seq:
        return "text-generation"
    raise base.Unrecoverable(
        "UnsupportedModel",
        f"{folder}: the transformers engine does not know what a {architecture} model serves; "
        f"set the engine option task to one of {', '.join(TASKS)}",
    )
