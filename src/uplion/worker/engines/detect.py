"""``auto``: which engine kind serves an artifact, from what the artifact holds.

A folder is a transformers model when its ``config.json`` names ``architectures`` or a
``model_type``, or when it holds a sentence-transformers ``modules.json``; otherwise it must hold
exactly one model file, looked for in its subfolders too (hidden ones skipped). Files are told
apart by their names and, for ``.json`` and ``.txt``, by their first bytes; nothing is ever
unpickled or imported here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from uplion.worker.engines import base

RECOGNIZED = (
    "a transformers folder (config.json with architectures or model_type), "
    "a sentence-transformers folder (modules.json), *.gguf (transformers), *.onnx (onnx), "
    "XGBoost *.ubj or *.json model files (xgboost), LightGBM *.txt model files (lightgbm), "
    "scikit-learn *.joblib, *.pkl or *.pickle (sklearn)"
)
"""The formats ``engine_kind`` knows, for error messages."""

_BY_SUFFIX = {
    ".gguf": "transformers",
    ".onnx": "onnx",
    ".ubj": "xgboost",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
}
_HEAD_BYTES = 65536
_XGBOOST_JSON = re.compile(rb'^\s*\{[^{]*?"learner"\s*:')
_LIGHTGBM_TEXT = re.compile(rb"^tree\r?\nversion=v\d")
_SHOWN = 10


def engine_kind(path: Path) -> str:
    """The engine kind for the fetched artifact at ``path`` (a folder or a single file);
    ``base.Unrecoverable("UnrecognizedArtifact", ...)`` naming what was found otherwise."""
    if path.is_dir() and _is_transformers_folder(path):
        return "transformers"
    return _single(path, None)[1]


def model_file(path: Path, kind: str) -> Path:
    """The model file of ``kind`` at ``path``: the file itself, or the only such file in the
    folder; ``base.Unrecoverable("UnrecognizedArtifact", ...)`` naming the files otherwise."""
    if path.is_file():
        return path
    return _single(path, kind)[0]


def _single(path: Path, kind: str | None) -> tuple[Path, str]:
    """The one model file at ``path`` (of ``kind``, or of any kind for ``None``) and its kind."""
    if path.is_file():
        found_kind = file_kind(path)
        if found_kind is None:
            raise _unrecognized(f"no engine recognizes the file {path}")
        return path, found_kind
    if not path.is_dir():
        raise _unrecognized(f"the artifact {path} does not exist")
    files = _files(path)
    matching = [(file, found_kind) for file in files
                if (found_kind := file_kind(file)) is not None
                and (kind is None or found_kind == kind)]
    if len(matching) == 1:
        return matching[0]
    wanted = "model files" if kind is None else f"{kind} model files"
    if not matching:
        shown = ", ".join(_name(path, file) for file in files[:_SHOWN]) or "nothing"
        more = f" and {len(files) - _SHOWN} more" if len(files) > _SHOWN else ""
        raise _unrecognized(f"no {wanted} in {path}: found {shown}{more}")
    listed = ", ".join(f"{_name(path, file)} ({found})" for file, found in matching[:_SHOWN])
    raise base.Unrecoverable(
        "UnrecognizedArtifact",
        f"{path} holds several {wanted}: {listed}; point the source at one file, or at a "
        "folder holding only one",
    )


def file_kind(file: Path) -> str | None:
    """The engine kind of a single file (a link: of the file it names), ``None`` when it is no
    model file uplion knows."""
    suffix = file.resolve().suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if suffix == ".json":
        return "xgboost" if _XGBOOST_JSON.match(_head(file)) else None
    if suffix == ".txt":
        return "lightgbm" if _LIGHTGBM_TEXT.match(_head(file)) else None
    return None


def _is_transformers_folder(folder: Path) -> bool:
    if (folder / "modules.json").is_file():
        return True
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        content = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(content, dict) and ("architectures" in content or "model_type" in content)


def _files(folder: Path) -> list[Path]:
    """The files under ``folder``, hidden files and folders (``.git``, ``.cache``) left out."""
    return sorted(
        file for file in folder.rglob("*")
        if file.is_file()
        and not any(part.startswith(".") for part in file.relative_to(folder).parts)
    )


def _head(file: Path) -> bytes:
    try:
        with file.open("rb") as stream:
            return stream.read(_HEAD_BYTES)
    except OSError:
        return b""


def _name(folder: Path, file: Path) -> str:
    return file.relative_to(folder).as_posix()


def _unrecognized(what: str) -> base.Unrecoverable:
    return base.Unrecoverable(
        "UnrecognizedArtifact", f"{what}; uplion recognizes {RECOGNIZED}"
    )
