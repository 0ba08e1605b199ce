"""Source URIs: their parts, and the form of them that may be shown (no secrets)."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from uplion.fetch.errors import FetchError

LOCAL_SCHEMES = frozenset({"path", "file", "package", "pvc"})
"""Sources used in place; ``path`` stands for a plain path."""
REMOTE_SCHEMES = frozenset({"s3", "hf", "https", "http"})
"""Sources fetched into the cache."""
_SCHEMES = "s3://, hf://, pvc://, https://, http://, file://, package:// or a path"


@dataclass(frozen=True)
class Source:
    """A parsed source: ``scheme`` is ``path`` for a plain path; ``authority`` is the bucket,
    ``org/repo[@revision]``, host, claim or package; ``path`` the rest, without its leading
    ``/`` (a plain path and ``file://`` keep theirs)."""

    uri: str
    scheme: str
    authority: str
    path: str

    @property
    def shown(self) -> str:
        """The URI as it may appear in logs and errors."""
        return redact(self.uri)


def redact(uri: str) -> str:
    """``uri`` without user information, query or fragment, where signatures and tokens hide."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    rest, query, _ = rest.partition("#")[0].partition("?")
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}{'?…' if query else ''}"


def parse(uri: str) -> Source:
    """The parts of ``uri``; ``FetchError("InvalidSource")`` when it names nothing usable."""
    if not uri.strip():
        raise FetchError("InvalidSource", "the source is empty: give a URI or a path")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return Source(uri, "path", "", uri)
    scheme = scheme.lower()
    if scheme not in (LOCAL_SCHEMES - {"path"}) | REMOTE_SCHEMES:
        raise FetchError(
            "InvalidSource", f"{redact(uri)}: scheme {scheme}:// is not supported; use {_SCHEMES}"
        )
    if scheme in ("http", "https"):
        split = urllib.parse.urlsplit(uri)
        authority, path = split.hostname or "", split.path
    elif scheme == "hf":
        org, _, more = rest.partition("/")
        repo, _, path = more.partition("/")
        authority = f"{org}/{repo}" if org and repo else ""
    else:
        authority, _, path = rest.partition("/")
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise FetchError(
                "InvalidSource",
                f"{uri}: a file:// URI names an absolute path on this machine "
                f"(file:///{authority}/{path}), not one on host {authority!r}",
            )
        return Source(uri, scheme, "", "/" + path)
    if not authority:
        raise FetchError("InvalidSource", f"{redact(uri)} is incomplete: write {_FORMS[scheme]}")
    return Source(uri, scheme, authority, path.strip("/"))


_FORMS = {
    "s3": "s3://bucket[/prefix-or-key]",
    "hf": "hf://org/repo[@revision][/file]",
    "pvc": "pvc://claim[/path]",
    "package": "package://python_package[/path]",
    "http": "http://host/path",
    "https": "https://host/path",
}


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(source: Source, limit: int = 64) -> str:
    """A readable file name made from the source: ``s3-bucket-models-bert``."""
    text = _UNSAFE.sub("-", f"{source.scheme}-{source.authority}-{source.path}").strip("-.")
    return text[:limit].rstrip("-.") or source.scheme
