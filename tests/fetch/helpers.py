"""Small builders for the fetch tests: digests, cache listings, a Hugging Face hub cache."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entries(cache_root: Path) -> list[str]:
    """The entries of a cache (``.locks`` aside), with any partial folder left behind listed
    as ``.partial/<name>``."""
    if not cache_root.exists():
        return []
    found = [p.name for p in cache_root.iterdir() if not p.name.startswith(".")]
    partial = cache_root / ".partial"
    return found + ([f".partial/{p.name}" for p in partial.iterdir()] if partial.exists() else [])


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hub_repo(hub_cache: Path, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
    """A repository in a Hugging Face hub cache, laid out as huggingface_hub writes it
    (``models--org--name/{blobs,snapshots/<commit>,refs/<branch>}``, files linked to blobs);
    its commit."""
    commit = sha256(repo.encode() + branch.encode())[:40]
    folder = hub_cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / branch).write_text(commit)
    for name, data in files.items():
        blob = folder / "blobs" / sha256(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", blob.name))
    return commit
