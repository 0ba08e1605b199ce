"""``hf://org/repo[@revision]`` (the repository, through ``include``/``exclude``) and
``hf://org/repo[@revision]/path/file`` (one file), from the Hugging Face Hub.

huggingface_hub downloads into its own cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``; read at each fetch, not at import) with its own locks and
resumption, and the cache entry then holds hard links to those files (copies across file
systems): where both caches share a volume, a model is on disk once. ``HF_TOKEN``
authenticates; with ``HF_HUB_OFFLINE=1`` only the Hub's cache is read. A revision with ``/``
in it is written with ``%2F`` (``@refs%2Fpr%2F1``).
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from uplion.fetch import selection
from uplion.fetch.errors import FetchError, TransientError
from uplion.fetch.plan import Plan
from uplion.fetch.retry import retrying
from uplion.fetch.sources import Source
from uplion.models.spec import FetchSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


def hub_cache() -> Path:
    """The Hub's cache folder, as huggingface_hub finds it from the environment."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def plan(source: Source, options: FetchSpec) -> Plan:
    repo, _, revision = source.authority.partition("@")
    cache, offline = hub_cache(), _offline()
    if source.path:
        file = Path(_call(source, cache, offline, lambda: hf_hub_download(
            repo, source.path, revision=urllib.parse.unquote(revision) or None,
            cache_dir=cache, local_files_only=offline,
        )))
        commit = file.parents[len(PurePosixPath(source.path).parts) - 1].name
        return Plan(commit, file.name, "file", lambda target: _link(source, [(file, target)]))
    snapshot = Path(_call(source, cache, offline, lambda: snapshot_download(
        repo, revision=urllib.parse.unquote(revision) or None, cache_dir=cache,
        local_files_only=offline, allow_patterns=options.include or None,
        ignore_patterns=options.exclude or None,
    )))
    files = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    chosen = selection.select(files, options.include, options.exclude)
    if not chosen:
        raise FetchError(
            "SourceNotFound",
            f"{source.shown}: none of its {len(files)} files matches include {options.include} "
            f"and exclude {options.exclude}",
        )
    return Plan(snapshot.name, repo.rsplit("/", 1)[-1], "folder",
                lambda folder: _link(source, [(snapshot / p, folder / p) for p in chosen]))


def _link(source: Source, pairs: list[tuple[Path, Path]]) -> dict[str, str]:
    """Hard-link (else copy) the Hub cache's files into the entry; no digest computed."""
    for cached, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = cached.resolve()
        try:
            os.link(blob, target)
        except OSError:
            shutil.copyfile(blob, target)
    log.info("%s: %d files from the Hub's cache", source.shown, len(pairs))
    return {}


def _call(source: Source, cache: Path, offline: bool, call: Callable[[], T]) -> T:
    return retrying(lambda: _mapped(source, cache, offline, call))


def _mapped(source: Source, cache: Path, offline: bool, call: Callable[[], T]) -> T:
    """``call()``, its huggingface_hub errors turned into ``FetchError``s."""
    shown = source.shown
    try:
        return call()
    except GatedRepoError:
        raise FetchError("AccessDenied", f"{shown}: the repository is gated: accept its "
                         "conditions on the Hub as the account of HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise FetchError("SourceNotFound", f"{shown}: no such repository (or it is private and "
                         "HF_TOKEN does not grant access to it)") from None
    except RevisionNotFoundError:
        raise FetchError("SourceNotFound", f"{shown}: no such revision") from None
    except RemoteEntryNotFoundError:
        raise FetchError("SourceNotFound", f"{shown}: no file {source.path!r} in the "
                         "repository") from None
    except LocalEntryNotFoundError:
        if offline:
            raise FetchError("SourceNotFound", f"{shown}: HF_HUB_OFFLINE is set and the Hub's "
                             f"cache at {cache} does not hold it (complete)") from None
        raise FetchError("FetchFailed", f"{shown}: the Hub could not be reached and its cache "
                         f"at {cache} does not hold it") from None
    except HfHubHTTPError as error:
        status = error.response.status_code
        if status in (401, 403):
            raise FetchError("AccessDenied", f"{shown}: the Hub answered {status}") from None
        if status >= 500 or status == 429:
            raise TransientError(f"{shown}: the Hub answered {status}") from None
        raise FetchError("FetchFailed", f"{shown}: the Hub answered {status}") from None
    except HFValidationError as error:
        raise FetchError("InvalidSource", f"{shown}: {error}") from None
