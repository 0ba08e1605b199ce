"""``auto``: which engine kind serves an artifact, from what the artifact holds."""

from __future__ import annotations

from pathlib import Path

from uplion.worker.engines import base


def engine_kind(path: Path) -> str:
    """The engine kind for the fetched artifact at ``path`` (a folder or a single file);
    ``base.Unrecoverable("UnrecognizedArtifact", ...)`` naming what was found otherwise."""
    raise base.Unrecoverable("UnrecognizedArtifact", f"no engine recognizes {path}")
