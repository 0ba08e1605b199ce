"""SHA-256 checks of fetched artifacts.

``FetchSpec.sha256`` is one digest (of the file, or of the archive, the source names) or a
mapping of paths relative to the artifact to digests. Digests computed while downloading are
passed in as ``known`` so a file is read only once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from uplion.fetch import selection
from uplion.fetch.errors import FetchError

Expected = str | dict[str, str] | None
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def require_shape(shown: str, expected: Expected, *, single: bool) -> None:
    """Refuse one digest for a folder source before anything is downloaded."""
    if isinstance(expected, str) and not single:
        raise FetchError(
            "InvalidSource",
            f"{shown} is a folder: its sha256 must map file paths (relative to it) to digests, "
            "not be one digest",
        )


def verify(
    shown: str, artifact: Path, expected: Expected, known: Mapping[str, str] | None = None,
    *, single: bool,
) -> dict[str, str]:
    """Check ``artifact`` (a file when ``single``, else a folder) against ``expected``.

    Returns the digests checked, by relative path (a file's own name when ``single``);
    raises ``FetchError("ChecksumMismatch")`` naming the file and both digests.
    """
    known = known or {}
    require_shape(shown, expected, single=single)
    if expected is None:
        return {}
    wanted = {artifact.name: expected} if isinstance(expected, str) else expected
    checked: dict[str, str] = {}
    for relative, digest in wanted.items():
        if single:
            path = artifact if relative == artifact.name else None
        else:
            path = artifact / relative if selection.is_safe(relative) else None
        if path is None or not path.is_file():
            raise FetchError(
                "ChecksumMismatch",
                f"{shown}: {relative!r}, named in sha256, is not among the files fetched",
            )
        actual = known.get(relative) or file_sha256(path)
        checked[relative] = compare(shown, relative, digest, actual)
    return checked


def compare(shown: str, name: str, expected: str, actual: str) -> str:
    """``actual`` if it is ``expected``; else ``FetchError("ChecksumMismatch")``."""
    if actual.lower() != expected.lower():
        raise FetchError(
            "ChecksumMismatch", f"{shown}: {name} has sha256 {actual}, expected {expected.lower()}"
        )
    return actual
