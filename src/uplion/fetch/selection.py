"""Which files of a folder source to fetch (``include``/``exclude``), and which names are safe.

Patterns follow ``huggingface_hub``'s ``allow_patterns``/``ignore_patterns``, so a pattern means
the same for every scheme: shell globs on the path relative to the source (``*`` also matches
``/``), and a pattern ending in ``/`` matches everything under that folder.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(path, pattern + "*" if pattern.endswith("/") else pattern)
        for pattern in patterns
    )


def selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether ``path`` (relative, ``/``-separated) is fetched."""
    return (not include or _matches(path, include)) and not _matches(path, exclude)


def select(paths: Iterable[str], include: Sequence[str], exclude: Sequence[str]) -> list[str]:
    return [path for path in paths if selected(path, include, exclude)]


def is_safe(relative: str) -> bool:
    """Whether a relative path stays inside its folder: not empty, not absolute, no ``..``."""
    path = PurePosixPath(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts
