"""Fixtures of the fetch tests: an S3 endpoint, an HTTP server, a cache folder, and an
environment with no credentials or settings of the machine's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fetch.servers import FileServer, S3Server


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS profile, Hugging Face token or cache settings from the machine running the tests."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_CA_BUNDLE", "AWS_SESSION_TOKEN", "HF_TOKEN", "HF_HOME", "HF_HUB_CACHE",
                 "HF_HUB_OFFLINE", "UPLION_MODEL_CACHE", "UPLION_CACHE_DIR", "UPLION_PVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, as ``AWS_ENDPOINT_URL`` (moto keeps buckets for the whole session: each
    test makes its own)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.url)
    return s3_server


@pytest.fixture
def files() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server

