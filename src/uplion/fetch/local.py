"""Sources used in place: a plain path, ``file://``, ``pvc://`` and ``package://``."""

from __future__ import annotations

import importlib.util
import os
import urllib.request
from pathlib import Path

from uplion.fetch import selection
from uplion.fetch.errors import FetchError
from uplion.fetch.sources import Source

DEFAULT_PVC_ROOT = "/mnt/uplion/pvc"


def resolve(source: Source) -> Path:
    """The existing file or folder that ``source`` names (nothing is copied)."""
    if source.scheme == "path":
        path = Path(source.path).expanduser().absolute()
    elif source.scheme == "file":
        path = Path(urllib.request.url2pathname(source.path))
    elif source.scheme == "pvc":
        path = _in_claim(source)
    else:
        path = _in_package(source)
    if not path.exists():
        raise FetchError("SourceNotFound", f"{source.shown}: no such file or folder ({path})")
    return path


def _inside(source: Source, root: Path) -> Path:
    if source.path and not selection.is_safe(source.path):
        raise FetchError("InvalidSource", f"{source.shown}: the path must stay inside {root}")
    return root / source.path if source.path else root


def _in_claim(source: Source) -> Path:
    root = Path(os.environ.get("UPLION_PVC_ROOT") or DEFAULT_PVC_ROOT)
    claim = root / source.authority
    if not claim.is_dir():
        raise FetchError(
            "InvalidSource",
            f"{source.shown}: claim {source.authority!r} is not mounted at {claim}. pvc:// sources "
            "are for a cluster, where the operator mounts the claim read-only there; on one "
            "machine use a path or a file:// URI (or set UPLION_PVC_ROOT to where claims are)",
        )
    return _inside(source, claim)


def _in_package(source: Source) -> Path:
    name = source.authority
    if not name.isidentifier():
        raise FetchError(
            "InvalidSource",
            f"{source.shown}: {name!r} is not a top-level Python package name (a subpackage "
            "belongs in the path: package://top/sub/file)",
        )
    spec = importlib.util.find_spec(name)  # finds, never imports, a top-level package
    if spec is None:
        raise FetchError("SourceNotFound", f"{source.shown}: Python package {name!r} is not "
                         "installed")
    places = spec.submodule_search_locations
    if not places:
        raise FetchError("InvalidSource", f"{source.shown}: {name!r} is a module, not a package")
    candidates = [_inside(source, Path(place)) for place in places]
    return next((path for path in candidates if path.exists()), candidates[0])
