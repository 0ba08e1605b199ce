"""``s3://`` sources against moto's S3 server on loopback, with buckets made by each test."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from moto.core import enable_iam_authentication

from tests.fetch.helpers import entries, sha256, tree
from tests.fetch.servers import S3Server
from uplion.fetch import FetchError, fetch
from uplion.models.spec import FetchSpec, S3Options

MODEL = {
    "models/bert/config.json": b'{"model_type": "bert"}',
    "models/bert/weights/model.safetensors": b"\x00weights" * 1000,
    "models/bert/pytorch_model.bin": b"pickled",
    "models/bert-old/config.json": b"{}",
    "models/tiny.gguf": b"GGUF tiny",
}


def client(url: str | None = None) -> Any:
    return boto3.client("s3", endpoint_url=url)


def bucket(objects: dict[str, bytes] | None = None, url: str | None = None) -> str:
    """A new bucket holding ``objects`` (``MODEL`` by default)."""
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3 = client(url)
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="models/bert/", Body=b"")  # a console-made "folder"
    for key, data in (MODEL if objects is None else objects).items():
        s3.put_object(Bucket=name, Key=key, Body=data)
    return name


def gets(s3: S3Server, name: str) -> int:
    """Objects of ``name`` downloaded so far (path-style GETs of a key)."""
    return sum(1 for m, p in s3.requests if m == "GET" and p.startswith(f"/{name}/"))


def test_a_prefix_is_fetched_as_a_folder_of_its_objects(
    s3: S3Server, cache_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = bucket()
    caplog.set_level(logging.INFO, logger="uplion.fetch")
    path = fetch(f"s3://{name}/models/bert", FetchSpec(exclude=["*.bin"]), cache_root)
    assert path.is_dir()
    assert path.name == "bert"
    assert tree(path) == {
        "config.json": MODEL["models/bert/config.json"],
        "weights/model.safetensors": MODEL["models/bert/weights/model.safetensors"],
    }
    assert f"fetched s3://{name}/models/bert: 2 files" in caplog.text


def test_a_key_naming_one_object_is_fetched_as_that_file(s3: S3Server, cache_root: Path) -> None:
    name = bucket()
    data = MODEL["models/tiny.gguf"]
    path = fetch(f"s3://{name}/models/tiny.gguf", FetchSpec(sha256=sha256(data)), cache_root)
    assert path.is_file()
    assert path.name == "tiny.gguf"
    assert path.read_bytes() == data


def test_a_complete_entry_is_reused_until_an_object_changes(
    s3: S3Server, cache_root: Path
) -> None:
    name = bucket()
    uri = f"s3://{name}/models/bert"
    first = fetch(uri, FetchSpec(), cache_root)
    downloaded = gets(s3, name)
    assert downloaded == 3
    assert fetch(uri, FetchSpec(), cache_root) == first
    assert gets(s3, name) == downloaded, "the second fetch only listed the prefix"

    client().put_object(Bucket=name, Key="models/bert/config.json", Body=b'{"v": 2}')
    changed = fetch(uri, FetchSpec(), cache_root)
    assert changed != first
    assert (changed / "config.json").read_bytes() == b'{"v": 2}'
    assert (first / "config.json").read_bytes() == MODEL["models/bert/config.json"]


def test_a_missing_bucket_is_source_not_found(s3: S3Server, cache_root: Path) -> None:
    with pytest.raises(FetchError) as caught:
        fetch("s3://no-such-bucket-here/models", FetchSpec(), cache_root)
    assert caught.value.reason == "SourceNotFound"
    assert "s3://no-such-bucket-here/models" in caught.value.message
    assert "bucket 'no-such-bucket-here' does not exist" in caught.value.message


def test_a_missing_prefix_is_source_not_found(s3: S3Server, cache_root: Path) -> None:
    name = bucket()
    with pytest.raises(FetchError) as caught:
        fetch(f"s3://{name}/models/gpt", FetchSpec(), cache_root)
    assert caught.value.reason == "SourceNotFound"
    assert f"s3://{name}/models/gpt" in caught.value.message
    assert entries(cache_root) == []


def test_patterns_matching_nothing_are_source_not_found(s3: S3Server, cache_root: Path) -> None:
    name = bucket()
    with pytest.raises(FetchError) as caught:
        fetch(f"s3://{name}/models/bert", FetchSpec(include=["*.onnx"]), cache_root)
    assert caught.value.reason == "SourceNotFound"
    assert "include ['*.onnx']" in caught.value.message


def test_an_unknown_key_and_a_key_without_rights_are_access_denied(
    s3: S3Server, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = bucket()
    iam = boto3.client("iam", endpoint_url=s3.url)
    user = f"no-rights-{name}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with enable_iam_authentication():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
        with pytest.raises(FetchError) as unknown:
            fetch(f"s3://{name}/models/bert", FetchSpec(), cache_root)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        with pytest.raises(FetchError) as denied:
            fetch(f"s3://{name}/models/bert", FetchSpec(), cache_root)
    for caught, code in ((unknown, "InvalidAccessKeyId"), (denied, "AccessDenied")):
        assert caught.value.reason == "AccessDenied"
        assert f"s3://{name}/models/bert: access denied ({code})" in caught.value.message
    assert key["SecretAccessKey"] not in denied.value.message


def test_a_key_readable_without_the_right_to_list_the_bucket(
    s3: S3Server, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = bucket()
    iam = boto3.client("iam", endpoint_url=s3.url)
    user = f"reader-{name}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="one-object", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::{name}/models/tiny.gguf"}],
    }))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    with enable_iam_authentication():
        path = fetch(f"s3://{name}/models/tiny.gguf", FetchSpec(), cache_root)
        with pytest.raises(FetchError) as caught:
            fetch(f"s3://{name}/models/bert", FetchSpec(), cache_root)
    assert path.read_bytes() == MODEL["models/tiny.gguf"]
    assert caught.value.reason == "AccessDenied"


def test_a_bad_checksum_names_the_file_and_leaves_nothing_cached(
    s3: S3Server, cache_root: Path
) -> None:
    name = bucket()
    wrong = "0" * 64
    with pytest.raises(FetchError) as caught:
        fetch(f"s3://{name}/models/bert", FetchSpec(sha256={"config.json": wrong}), cache_root)
    assert caught.value.reason == "ChecksumMismatch"
    actual = sha256(MODEL["models/bert/config.json"])
    assert caught.value.message == (
        f"s3://{name}/models/bert: config.json has sha256 {actual}, expected {wrong}"
    )
    assert entries(cache_root) == []


def test_one_digest_for_a_folder_is_refused_before_downloading(
    s3: S3Server, cache_root: Path
) -> None:
    name = bucket()
    with pytest.raises(FetchError) as caught:
        fetch(f"s3://{name}/models/bert", FetchSpec(sha256="a" * 64), cache_root)
    assert caught.value.reason == "InvalidSource"
    assert "map file paths" in caught.value.message
    assert gets(s3, name) == 0


def test_endpoint_and_path_style_from_the_spec(
    s3_server: S3Server, cache_root: Path
) -> None:
    name = bucket({"m/a.txt": b"a"}, url=s3_server.url)
    options = FetchSpec(s3=S3Options(endpoint_url=s3_server.url, region="eu-west-1",
                                     path_style=True))
    path = fetch(f"s3://{name}/m", options, cache_root)
    assert tree(path) == {"a.txt": b"a"}
    assert gets(s3_server, name) == 1, "path-style: the bucket is in the request's path"
