"""``fetch``: a source URI to the local path of its complete artifact.

Local sources (a path, ``file://``, ``pvc://``, ``package://``) are used in place. Remote ones
(``s3://``, ``hf://``, ``https://``) resolve their version first (ETags, a commit), which
names the cache entry: a complete entry is reused; otherwise the entry's lock is taken, the
artifact is written beside the cache, checked against its digests and renamed into place.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from uplion.fetch import archives, cache, digests, https, hub, local, s3, sources
from uplion.fetch.errors import FetchError
from uplion.fetch.plan import Plan
from uplion.fetch.sources import Source
from uplion.models.spec import FetchSpec

log = logging.getLogger(__name__)

_PLANNERS: dict[str, Callable[[Source, FetchSpec], Plan]] = {
    "s3": s3.plan, "hf": hub.plan, "https": https.plan, "http": https.plan,
}


def fetch(source: str, options: FetchSpec, cache_root: Path | None = None) -> Path:
    """The local path of the artifact ``source`` names (a folder, or a file when the source
    names one); ``FetchError`` naming the URI when it cannot be had. Blocking."""
    parsed = sources.parse(source)
    try:
        if parsed.scheme in sources.LOCAL_SCHEMES:
            path = local.resolve(parsed)
            digests.verify(parsed.shown, path, options.sha256, single=path.is_file())
            return path
        return _fetch_remote(parsed, options, cache_root or cache.default_cache_root())
    except OSError as error:  # the disk: a cache that cannot be written, a file unreadable
        raise FetchError("FetchFailed", f"{parsed.shown}: {error}") from None


def _fetch_remote(source: Source, options: FetchSpec, root: Path) -> Path:
    plan = _PLANNERS[source.scheme](source, options)
    digests.require_shape(source.shown, options.sha256, single=plan.kind != "folder")
    name = cache.entry_name(source, plan.identity, options.include, options.exclude)
    entry = root / name
    if (found := _reuse(source, plan, entry, options)) is not None:
        return found
    with cache.locked(root, name, source.shown):
        if (found := _reuse(source, plan, entry, options)) is not None:
            return found
        log.info("fetching %s into %s", source.shown, entry)
        with cache.staging(root, name) as folder:
            manifest = _write(source, plan, options, folder)
            cache.publish(folder, manifest, entry)
    return entry / manifest.artifact


def _write(source: Source, plan: Plan, options: FetchSpec, folder: Path) -> cache.Manifest:
    """Write the artifact in ``folder`` and check it; its manifest."""
    shown, expected = source.shown, options.sha256
    manifest = cache.Manifest(source=shown, identity=plan.identity, artifact=plan.name,
                              kind=plan.kind)
    if plan.kind == "archive":
        download = folder / ".download" / plan.name
        download.parent.mkdir()
        archive_sha256 = plan.write(download)[plan.name]
        if isinstance(expected, str):
            digests.compare(shown, plan.name, expected, archive_sha256)
        unpacked = folder / archives.stem(plan.name)
        unpacked.mkdir()
        artifact = archives.unpack(shown, download, unpacked)
        shutil.rmtree(download.parent)
        manifest.archive_sha256 = archive_sha256
        manifest.artifact = artifact.relative_to(folder).as_posix()
        manifest.sha256 = digests.verify(
            shown, artifact, expected if isinstance(expected, dict) else None, single=False
        )
        return manifest
    artifact = folder / plan.name
    if plan.kind == "folder":
        artifact.mkdir()
    known = plan.write(artifact)
    checked = digests.verify(shown, artifact, expected, known, single=plan.kind == "file")
    manifest.sha256 = {**known, **checked}
    return manifest


def _reuse(source: Source, plan: Plan, entry: Path, options: FetchSpec) -> Path | None:
    """The artifact of a complete entry, checked against ``options.sha256`` (from the digests
    recorded when it was written, where it has them)."""
    manifest = cache.read(entry)
    if manifest is None:
        return None
    artifact = entry / manifest.artifact
    expected = options.sha256
    if manifest.kind == "archive" and isinstance(expected, str):
        digests.compare(source.shown, plan.name, expected, manifest.archive_sha256 or "")
    else:
        digests.verify(source.shown, artifact, expected, manifest.sha256,
                       single=manifest.kind == "file")
    log.info("using %s from the cache at %s", source.shown, artifact)
    return artifact
