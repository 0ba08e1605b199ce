"""The model cache: one folder per source and version, complete or absent.

``<root>/<slug>-<hash>/`` holds the artifact (a file or a folder) and ``.uplion-fetch.json``,
the manifest. An entry is written in ``<root>/.partial/`` and renamed into place when complete,
so a crash leaves no half model; ``<root>/.locks/<entry>.lock`` (``flock``) makes fetchers of
one entry (replicas sharing the volume) wait for each other instead of downloading twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from uplion.fetch.sources import Source, slug

log = logging.getLogger(__name__)
MANIFEST = ".uplion-fetch.json"


def default_cache_root() -> Path:
    """``$UPLION_MODEL_CACHE``, else ``$UPLION_CACHE_DIR/models``, else
    ``~/.cache/uplion/models``."""
    if explicit := os.environ.get("UPLION_MODEL_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("UPLION_CACHE_DIR") or "~/.cache/uplion"
    return Path(base).expanduser() / "models"


def entry_name(
    source: Source, identity: str, include: Sequence[str], exclude: Sequence[str]
) -> str:
    """``<slug>-<hash of the URI, the resolved version and the file patterns>``."""
    key = json.dumps([source.uri, identity, list(include), list(exclude)])
    return f"{slug(source)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclass
class Manifest:
    """What an entry holds: ``artifact`` relative to the entry, its kind, and the SHA-256
    digests known of its files (relative to the artifact) and of the archive it came from."""

    source: str
    identity: str
    artifact: str
    kind: str
    sha256: dict[str, str] = field(default_factory=dict)
    archive_sha256: str | None = None


def read(entry: Path) -> Manifest | None:
    """The manifest of a complete entry; ``None`` when there is none."""
    try:
        return Manifest(**json.loads((entry / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def locked(root: Path, name: str, shown: str) -> Iterator[None]:
    """Hold the entry's exclusive lock (waiting for another fetcher's, which the kernel
    releases if that process dies)."""
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{name}.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another fetch of %s to finish", shown)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging(root: Path, name: str) -> Iterator[Path]:
    """A fresh folder to write the entry in, removed unless ``publish`` moved it. Call it with
    the entry's lock held: partial folders of the entry left by dead fetchers go first."""
    partial = root / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob(f"{name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=partial))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(folder: Path, manifest: Manifest, entry: Path) -> None:
    """Write the manifest, then rename the finished folder to the entry in one step."""
    (folder / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
    folder.chmod(0o755)
    folder.rename(entry)
