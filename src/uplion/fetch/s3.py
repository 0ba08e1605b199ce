"""``s3://bucket/prefix``: every object under a prefix (a folder), or the one object a key
names (a file), from AWS or any S3 (MinIO…).

Endpoint, region, addressing and CA bundle come from ``FetchSpec.s3``, else from the standard
variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_CA_BUNDLE``);
credentials only from boto3's standard chain (variables, profile, web identity, the pod's role).
botocore retries each request on 5xx, throttling and connection errors; a body cut off while
read is fetched again here.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    ResponseStreamingError,
)

from uplion.fetch import selection, transfer
from uplion.fetch.errors import FetchError, TransientError
from uplion.fetch.plan import Plan
from uplion.fetch.retry import retrying
from uplion.fetch.sources import Source
from uplion.models.spec import FetchSpec, S3Options

_CHUNK = 1 << 20
_DENIED = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "AccountProblem",
})


@dataclass(frozen=True)
class _Object:
    key: str
    etag: str
    size: int


def plan(source: Source, options: FetchSpec) -> Plan:
    bucket, key = source.authority, source.path
    client = _client(source, options.s3)
    prefix = f"{key}/" if key else ""
    listed: list[_Object] = []
    denied: FetchError | None = None
    try:
        listed = _call(source, lambda: _list(client, bucket, prefix))
    except FetchError as error:
        if error.reason != "AccessDenied" or not key:
            raise
        denied = error  # yet the key may name an object readable without s3:ListBucket
    if listed:
        return _folder(source, options, client, prefix, listed)
    if key:
        try:
            head = _call(source, lambda: client.head_object(Bucket=bucket, Key=key), missing=True)
        except FetchError:
            if denied is None:
                raise
            head = None
        if head is not None:
            single = _Object(key, head["ETag"], head["ContentLength"])
            return Plan(_identity(client, [("", single)]), key.rsplit("/", 1)[-1], "file",
                        lambda path: _write([(single, path)], client, source))
    if denied is not None:
        raise denied
    where = f"no object {key!r} and nothing under {prefix!r}" if key else "the bucket is empty"
    raise FetchError("SourceNotFound", f"{source.shown}: {where} in bucket {bucket!r}")


def _folder(
    source: Source, options: FetchSpec, client: Any, prefix: str, listed: list[_Object]
) -> Plan:
    files = {obj.key[len(prefix):]: obj for obj in listed if not obj.key.endswith("/")}
    chosen = selection.select(sorted(files), options.include, options.exclude)
    if not chosen:
        raise FetchError(
            "SourceNotFound",
            f"{source.shown}: none of its {len(files)} objects matches include {options.include} "
            f"and exclude {options.exclude}",
        )
    unsafe = next((path for path in chosen if not selection.is_safe(path)), None)
    if unsafe is not None:
        raise FetchError("InvalidSource", f"{source.shown}: object key {prefix}{unsafe} would "
                         "be written outside the model's folder")
    name = source.path.rsplit("/", 1)[-1] or source.authority

    def write(folder: Path) -> dict[str, str]:
        return _write([(files[path], folder / path) for path in chosen], client, source, folder)

    return Plan(_identity(client, [(path, files[path]) for path in chosen]), name, "folder", write)


def _client(source: Source, options: S3Options) -> Any:
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        max_pool_connections=2 * transfer.WORKERS,
        s3={"addressing_style": "path" if options.path_style else "auto"},
    )
    try:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=options.endpoint_url,
            region_name=options.region or os.environ.get("AWS_REGION"),
            verify=options.ca_bundle,
            config=config,
        )
    except (ValueError, BotoCoreError) as error:
        raise FetchError("InvalidSource", f"{source.shown}: bad S3 settings: {error}") from None


def _identity(client: Any, objects: list[tuple[str, _Object]]) -> str:
    return json.dumps([client.meta.endpoint_url,
                       [(path, obj.etag, obj.size) for path, obj in objects]])


def _list(client: Any, bucket: str, prefix: str) -> list[_Object]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [
        _Object(item["Key"], item["ETag"], item["Size"])
        for page in pages for item in page.get("Contents", [])
    ]


def _write(
    objects: list[tuple[_Object, Path]], client: Any, source: Source, root: Path | None = None
) -> dict[str, str]:
    """Download ``objects`` in parallel; their digests by path relative to ``root`` (or by
    file name, for one file)."""
    progress = transfer.Progress(source.shown, len(objects), sum(o.size for o, _ in objects))

    def job(obj: _Object, path: Path) -> tuple[str, str]:
        digest = _call(source, lambda: retrying(lambda: _get(client, source, obj, path, progress)))
        progress.file_done()
        return (path.relative_to(root).as_posix() if root else path.name), digest

    jobs = [functools.partial(job, obj, path) for obj, path in objects]
    digests = dict(transfer.parallel(jobs, progress))
    progress.finish()
    return digests


def _get(client: Any, source: Source, obj: _Object, path: Path, progress: transfer.Progress) -> str:
    response = client.get_object(Bucket=source.authority, Key=obj.key, IfMatch=obj.etag)
    try:
        return transfer.write_stream(response["Body"].iter_chunks(_CHUNK), path, progress)
    except (ResponseStreamingError, IncompleteReadError, HTTPClientError) as error:
        raise TransientError(
            f"{source.shown}: reading {obj.key} was cut off ({type(error).__name__})"
        ) from None


def _call(source: Source, call: Any, missing: bool = False) -> Any:
    """``call()``, its S3 errors turned into ``FetchError``s; with ``missing``, ``None`` for a
    404 (an object that is not there)."""
    try:
        return call()
    except ClientError as error:
        details = error.response.get("Error", {})
        code = str(details.get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if missing and (status == 404 or code in ("404", "NoSuchKey", "NotFound")):
            return None
        raise _failure(source, code, status, str(details.get("Key") or "")) from None
    except NoCredentialsError:
        raise FetchError(
            "AccessDenied",
            f"{source.shown}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile, or give the pod a role)",
        ) from None
    except ParamValidationError as error:
        raise FetchError("InvalidSource", f"{source.shown}: {error}") from None
    except BotoCoreError as error:
        raise FetchError("FetchFailed", f"{source.shown}: {error}") from None


def _failure(source: Source, code: str, status: int | None, key: str) -> FetchError:
    shown = source.shown
    if code == "NoSuchBucket":
        return FetchError("SourceNotFound", f"{shown}: bucket {source.authority!r} does not exist")
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return FetchError("SourceNotFound", f"{shown}: object {key or source.path!r} not found")
    if code in _DENIED or status in (401, 403):
        return FetchError(
            "AccessDenied",
            f"{shown}: access denied ({code or status}); check the credentials (AWS_* variables, "
            "the Secret, the pod's role) and the bucket's policy",
        )
    if code == "PreconditionFailed" or status == 412:
        return FetchError("FetchFailed", f"{shown}: objects changed while being fetched; "
                          "fetch again")
    return FetchError("FetchFailed", f"{shown}: S3 answered {code or 'an error'} ({status})")
