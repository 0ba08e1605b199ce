"""Sentence embeddings from token vectors, pooled the way the model's own configuration says.

A sentence-transformers folder lists its modules in ``modules.json``: a Transformer (the folder of
the transformers model, with ``sentence_bert_config.json``), a Pooling (``config.json`` naming the
mode, in the current ``pooling_mode`` form or the older ``pooling_mode_*_token(s)`` flags) and
optionally a Normalize. Other modules (Dense, Router, ...) change the vectors in ways this engine
does not reproduce, so such a folder is refused with a reason rather than served differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uplion.worker.engines import base

if TYPE_CHECKING:
    import torch

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
"""The pooling modes served; a folder may concatenate several."""

_LEGACY_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True, slots=True)
class Pooling:
    """How token vectors become one vector per text."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = True
    max_seq_length: int | None = None
    lower_case: bool = False


@dataclass(frozen=True, slots=True)
class SentenceFolder:
    """A sentence-transformers folder: where its transformers model is, and its pooling."""

    model_dir: Path
    pooling: Pooling


def sentence_folder(folder: Path) -> SentenceFolder | None:
    """The layout of the sentence-transformers folder ``folder``; ``None`` when it has no
    ``modules.json``; ``base.Unrecoverable`` naming the file for one this engine cannot serve."""
    listing = folder / "modules.json"
    if not listing.is_file():
        return None
    model_dir: Path | None = None
    modes: tuple[str, ...] | None = None
    normalize = False
    modules = _read_json(listing)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise base.Unrecoverable("InvalidArtifact", f"{listing} is not a list of modules")
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = folder / str(module.get("path", ""))
        if kind == "Transformer":
            model_dir = where
        elif kind == "Pooling":
            modes = _modes(where / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise _unsupported(f"{listing} lists a {module.get('type')} module")
    if model_dir is None or modes is None:
        raise _unsupported(f"{listing} lists no Transformer and Pooling modules")
    settings = model_dir / "sentence_bert_config.json"
    options = _read_json(settings) if settings.is_file() else {}
    length = options.get("max_seq_length")
    pooling = Pooling(
        modes=modes,
        normalize=normalize,
        max_seq_length=length if isinstance(length, int) and length > 0 else None,
        lower_case=bool(options.get("do_lower_case", False)),
    )
    return SentenceFolder(model_dir=model_dir, pooling=pooling)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One float32 vector per row of ``hidden`` (batch, tokens, width), over the tokens that
    ``mask`` (batch, tokens) marks, padding on either side."""
    import torch

    hidden = hidden.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    pieces = []
    for mode in pooling.modes:
        if mode == "cls":  # the first token that is not padding
            pieces.append(hidden[rows, mask.int().argmax(dim=1)])
        elif mode == "lasttoken":  # the last token that is not padding
            pieces.append(hidden[rows, (mask.int() * positions).argmax(dim=1)])
        elif mode == "max":
            pieces.append(hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values)
        else:
            counts = weights.sum(dim=1).clamp(min=1e-9)
            sums = (hidden * weights).sum(dim=1)
            pieces.append(sums / (counts if mode == "mean" else counts.sqrt()))
    vectors = torch.cat(pieces, dim=-1)
    if pooling.normalize:
        vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
    return vectors


def _modes(config_path: Path) -> tuple[str, ...]:
    config = _read_json(config_path) if config_path.is_file() else {}
    named = config.get("pooling_mode")
    if isinstance(named, str):
        modes: tuple[str, ...] = (named,)
    elif isinstance(named, list):
        modes = tuple(str(mode) for mode in named)
    else:
        modes = tuple(mode for flag, mode in _LEGACY_FLAGS.items() if config.get(flag))
    modes = modes or ("mean",)
    for mode in modes:
        if mode not in MODES:
            raise _unsupported(
                f"{config_path} asks for pooling mode {mode!r} (served: {', '.join(MODES)})"
            )
    return modes


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise base.Unrecoverable("InvalidArtifact", f"cannot read {path}: {error}") from error


def _unsupported(what: str) -> base.Unrecoverable:
    return base.Unrecoverable(
        "UnsupportedModel",
        f"{what}, which the transformers engine does not run; serve this folder with engine "
        "kind sentence-transformers",
    )
