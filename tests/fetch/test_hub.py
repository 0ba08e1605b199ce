"""``hf://`` sources against a Hugging Face hub cache built by hand, with HF_HUB_OFFLINE=1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fetch.helpers import hub_repo, sha256, tree
from uplion.fetch import FetchError, fetch
from uplion.models.spec import FetchSpec

FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": b"safetensors" * 100,
    "pytorch_model.bin": b"pickle",
    "tokenizer/tokenizer.json": b"{}",
    "tiny.Q4_0.gguf": b"GGUF",
}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub cache at ``HF_HUB_CACHE`` holding ``org/tiny``."""
    cache = tmp_path / "hf-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_repo(cache, "org/tiny", FILES)
    return cache


def test_a_repository_through_include_and_exclude(hub: Path, cache_root: Path) -> None:
    path = fetch("hf://org/tiny", FetchSpec(exclude=["*.bin", "*.gguf"]), cache_root)
    assert path.name == "tiny"
    assert tree(path) == {k: v for k, v in FILES.items() if k.endswith((".json", ".safetensors"))}
    only = fetch("hf://org/tiny", FetchSpec(include=["*.json"], exclude=["tokenizer/"]),
                 cache_root)
    assert tree(only) == {"config.json": FILES["config.json"]}
    blob = hub / "models--org--tiny" / "blobs" / sha256(FILES["model.safetensors"])
    assert (path / "model.safetensors").stat().st_ino == blob.stat().st_ino, "a hard link"


def test_one_file_at_a_revision(hub: Path, cache_root: Path) -> None:
    commit = hub_repo(hub, "org/other", {"m.gguf": b"GGUF other"}, branch="v2")
    data = b"GGUF other"
    path = fetch("hf://org/other@v2/m.gguf", FetchSpec(sha256=sha256(data)), cache_root)
    assert path.name == "m.gguf"
    assert path.read_bytes() == data
    pinned = fetch(f"hf://org/other@{commit}/m.gguf", FetchSpec(), cache_root)
    assert pinned.read_bytes() == data


def test_a_file_in_a_folder_of_the_repository(hub: Path, cache_root: Path) -> None:
    path = fetch("hf://org/tiny/tokenizer/tokenizer.json", FetchSpec(), cache_root)
    assert path.name == "tokenizer.json"
    assert path.read_bytes() == b"{}"


def test_what_the_offline_cache_lacks_is_source_not_found(hub: Path, cache_root: Path) -> None:
    for uri in ("hf://org/absent", "hf://org/tiny@v9", "hf://org/tiny/absent.gguf"):
        with pytest.raises(FetchError) as caught:
            fetch(uri, FetchSpec(), cache_root)
        assert caught.value.reason == "SourceNotFound"
        assert caught.value.message.startswith(f"{uri}: HF_HUB_OFFLINE is set")
        assert str(hub) in caught.value.message


def test_hf_home_locates_the_hub_cache(
    tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_repo(tmp_path / "hf-home" / "hub", "org/home", {"config.json": b"{}"})
    assert tree(fetch("hf://org/home", FetchSpec(), cache_root)) == {"config.json": b"{}"}


def test_a_checksum_mismatch_leaves_nothing_cached(hub: Path, cache_root: Path) -> None:
    with pytest.raises(FetchError) as caught:
        fetch("hf://org/tiny", FetchSpec(sha256={"config.json": "0" * 64}), cache_root)
    assert caught.value.reason == "ChecksumMismatch"
    assert "hf://org/tiny: config.json has sha256" in caught.value.message
    assert [p.name for p in cache_root.iterdir() if not p.name.startswith(".")] == []
