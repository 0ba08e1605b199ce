"""Archives from ``https://`` sources, unpacked only when every member is safe: no absolute
paths, no ``..``, no link pointing outside the folder, no device or pipe. One unsafe member
refuses the whole archive before anything is written."""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

from uplion.fetch import selection
from uplion.fetch.errors import FetchError

SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def stem(name: str) -> str:
    """The folder an archive unpacks into: its name without the suffix."""
    suffix = next(s for s in SUFFIXES if name.lower().endswith(s))
    return name[: -len(suffix)] or "model"


def unpack(shown: str, archive: Path, folder: Path) -> Path:
    """Unpack ``archive`` into ``folder``; the model's folder: ``folder``, or the one folder
    the archive holds (``tar czf m.tgz my-model`` gives ``my-model``'s files)."""
    if archive.name.lower().endswith(".zip"):
        _unzip(shown, archive, folder)
    else:
        _untar(shown, archive, folder)
    inside = list(folder.iterdir())
    if len(inside) == 1 and inside[0].is_dir() and not inside[0].is_symlink():
        return inside[0]
    return folder


def _unsafe(shown: str, member: str, why: str) -> FetchError:
    return FetchError("UnsafeArchive", f"{shown}: member {member!r} {why}; nothing was unpacked")


def _inside(name: str) -> bool:
    name = name.rstrip("/")
    return name in ("", ".") or selection.is_safe(name)


def _untar(shown: str, archive: Path, folder: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                _check_tar(shown, member)
            tar.extractall(folder, filter="data")
    except tarfile.FilterError as error:
        raise FetchError("UnsafeArchive", f"{shown}: {error}; refused") from None
    except (tarfile.TarError, EOFError) as error:
        raise FetchError("FetchFailed", f"{shown}: not a readable tar archive ({error})") from None


def _check_tar(shown: str, member: tarfile.TarInfo) -> None:
    if not _inside(member.name):
        raise _unsafe(shown, member.name, "would be written outside the model's folder")
    if member.isdev() or member.isfifo():
        raise _unsafe(shown, member.name, "is a device or a pipe")
    if member.issym():
        target = posixpath.join(posixpath.dirname(member.name), member.linkname)
        if member.linkname.startswith("/") or not _inside(posixpath.normpath(target)):
            raise _unsafe(shown, member.name, f"links outside the folder ({member.linkname})")
    if member.islnk() and not _inside(posixpath.normpath(member.linkname)):
        raise _unsafe(shown, member.name, f"links outside the folder ({member.linkname})")


def _unzip(shown: str, archive: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                mode = info.external_attr >> 16
                if not _inside(info.filename):
                    raise _unsafe(shown, info.filename, "would be written outside the folder")
                if stat.S_ISLNK(mode):
                    raise _unsafe(shown, info.filename, "is a link (not unpacked from zips)")
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise _unsafe(shown, info.filename, "is a device or a pipe")
            bundle.extractall(folder)
    except (zipfile.BadZipFile, EOFError) as error:
        raise FetchError("FetchFailed", f"{shown}: not a readable zip archive ({error})") from None
