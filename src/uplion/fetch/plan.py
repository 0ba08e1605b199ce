"""What a remote source resolved to, before anything is downloaded: the contract between the
fetcher (``core``) and the schemes (``s3``, ``hub``, ``https``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["file", "folder", "archive"]


@dataclass(frozen=True)
class Plan:
    """``identity`` is what, besides the URI, tells versions apart (ETags, a commit);
    ``name`` the artifact's file or folder name; ``write(path)`` writes the artifact (an
    archive: the archive file) at ``path`` and returns the SHA-256 digests it computed on the
    way, by path relative to the artifact (a file: by its name)."""

    identity: str
    name: str
    kind: Kind
    write: Callable[[Path], dict[str, str]]
