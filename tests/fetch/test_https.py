"""``http(s)://`` sources against an HTTP server on loopback: files, archives, retries, ETags."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from tests.fetch.helpers import entries, sha256, tree
from tests.fetch.servers import FileServer, Route
from uplion.fetch import FetchError, fetch
from uplion.models.spec import FetchSpec

CONFIG = b'{"model_type": "gpt2"}'
WEIGHTS = b"\x01weights" * 5000


def tar_gz(members: dict[str, bytes], top: str = "") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return out.getvalue()


def test_a_file(files: FileServer, cache_root: Path) -> None:
    files.routes["/models/tiny.gguf"] = Route(WEIGHTS, etag='"w1"')
    path = fetch(f"{files.url}/models/tiny.gguf", FetchSpec(sha256=sha256(WEIGHTS)), cache_root)
    assert path.name == "tiny.gguf"
    assert path.read_bytes() == WEIGHTS


def test_a_tar_gz_is_unpacked_into_the_folder_it_holds(
    files: FileServer, cache_root: Path
) -> None:
    archive = tar_gz({"config.json": CONFIG, "weights/model.safetensors": WEIGHTS}, "gpt2-tiny/")
    files.routes["/gpt2.tar.gz"] = Route(archive, etag='"a1"')
    options = FetchSpec(sha256=sha256(archive))
    path = fetch(f"{files.url}/gpt2.tar.gz", options, cache_root)
    assert path.name == "gpt2-tiny"
    assert tree(path) == {"config.json": CONFIG, "weights/model.safetensors": WEIGHTS}
    assert not list(cache_root.rglob("*.tar.gz")), "the archive itself is not kept"
    assert fetch(f"{files.url}/gpt2.tar.gz", options, cache_root) == path
    with pytest.raises(FetchError) as caught:
        fetch(f"{files.url}/gpt2.tar.gz", FetchSpec(sha256="f" * 64), cache_root)
    assert caught.value.reason == "ChecksumMismatch"
    assert "gpt2.tar.gz has sha256" in caught.value.message


def test_a_zip_is_unpacked_and_digests_name_its_files(files: FileServer, cache_root: Path) -> None:
    files.routes["/clf.zip"] = Route(zipped({"model.onnx": WEIGHTS, "labels.txt": b"a\nb"}))
    options = FetchSpec(sha256={"model.onnx": sha256(WEIGHTS)})
    path = fetch(f"{files.url}/clf.zip", options, cache_root)
    assert path.name == "clf"
    assert tree(path) == {"model.onnx": WEIGHTS, "labels.txt": b"a\nb"}


def _tar(*members: tarfile.TarInfo) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        tar.addfile(_file("config.json", CONFIG), io.BytesIO(CONFIG))
        for member in members:
            tar.addfile(member, io.BytesIO(b"evil") if member.isfile() else None)
    return out.getvalue()


def _file(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize(("name", "archive", "why"), [
    ("evil.tar.gz", _tar(_file("../evil", b"evil")), "'../evil' would be written outside"),
    ("abs.tar.gz", _tar(_file("/tmp/evil", b"evil")), "'/tmp/evil' would be written outside"),
    ("link.tar.gz", _tar(_link("passwd", "/etc/passwd")), "links outside the folder"),
    ("up.tar.gz", _tar(_link("up", "../../x")), "links outside the folder"),
    ("hard.tar.gz", _tar(_link("h", "../x", tarfile.LNKTYPE)), "links outside the folder"),
    ("dev.tar.gz", _tar(_device("null")), "is a device or a pipe"),
    ("evil.zip", zipped({"ok.txt": b"ok", "../evil": b"evil"}), "would be written outside"),
])
def test_an_unsafe_archive_is_refused_whole(
    files: FileServer, cache_root: Path, tmp_path: Path, name: str, archive: bytes, why: str
) -> None:
    files.routes[f"/{name}"] = Route(archive)
    with pytest.raises(FetchError) as caught:
        fetch(f"{files.url}/{name}", FetchSpec(), cache_root)
    assert caught.value.reason == "UnsafeArchive"
    assert caught.value.message.startswith(f"{files.url}/{name}: member ")
    assert why in caught.value.message
    assert entries(cache_root) == []
    assert not list(tmp_path.rglob("evil"))
    assert not list(tmp_path.rglob("config.json"))


def test_the_etag_names_the_version(files: FileServer, cache_root: Path) -> None:
    files.routes["/m.onnx"] = Route(b"v1", etag='"1"')
    first = fetch(f"{files.url}/m.onnx", FetchSpec(), cache_root)
    assert fetch(f"{files.url}/m.onnx", FetchSpec(), cache_root) == first
    assert (files.count("HEAD", "/m.onnx"), files.count("GET", "/m.onnx")) == (2, 1)

    files.routes["/m.onnx"] = Route(b"v2", etag='"2"')
    second = fetch(f"{files.url}/m.onnx", FetchSpec(), cache_root)
    assert second != first
    assert second.read_bytes() == b"v2"
    assert files.count("GET", "/m.onnx") == 2


def test_without_an_etag_the_uri_names_the_entry(files: FileServer, cache_root: Path) -> None:
    files.routes["/plain.bin"] = Route(b"plain")
    first = fetch(f"{files.url}/plain.bin", FetchSpec(), cache_root)
    assert fetch(f"{files.url}/plain.bin", FetchSpec(), cache_root) == first
    assert files.count("GET", "/plain.bin") == 1


def test_missing_and_forbidden(files: FileServer, cache_root: Path) -> None:
    with pytest.raises(FetchError) as missing:
        fetch(f"{files.url}/nothing.gguf", FetchSpec(), cache_root)
    assert missing.value.reason == "SourceNotFound"
    assert missing.value.message == f"{files.url}/nothing.gguf: the server answered 404"
    files.routes["/secret.bin"] = Route(b"", failures=[403])
    with pytest.raises(FetchError) as denied:
        fetch(f"{files.url}/secret.bin", FetchSpec(), cache_root)
    assert denied.value.reason == "AccessDenied"
    assert files.count("GET", "/secret.bin") == 1, "a 403 is not tried again"


def test_a_503_is_tried_again(files: FileServer, cache_root: Path) -> None:
    files.routes["/flaky.bin"] = Route(WEIGHTS, etag='"f"', failures=[503])
    path = fetch(f"{files.url}/flaky.bin", FetchSpec(), cache_root)
    assert path.read_bytes() == WEIGHTS
    assert files.count("GET", "/flaky.bin") == 2


def test_signed_query_strings_never_reach_errors_or_logs(
    files: FileServer, cache_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    files.routes["/signed.bin"] = Route(b"data", etag='"s"')
    uri = f"http://user:hunter2@127.0.0.1:{files.url.rsplit(':', 1)[1]}/signed.bin"
    path = fetch(f"{uri}?X-Amz-Signature=topsecret", FetchSpec(), cache_root)
    assert path.read_bytes() == b"data"
    with pytest.raises(FetchError) as caught:
        fetch(f"{files.url}/gone.bin?X-Amz-Signature=topsecret", FetchSpec(), cache_root)
    assert caught.value.message.startswith(f"{files.url}/gone.bin?…: ")
    assert "httpx" in {record.name for record in caplog.records}
    for text in (caplog.text, caught.value.message, str(path)):
        assert "topsecret" not in text
        assert "hunter2" not in text


def test_two_fetchers_of_one_source_download_it_once(
    files: FileServer, cache_root: Path
) -> None:
    # The download waits until both fetchers have asked for the version, so the second one
    # is certainly running while the first downloads: it must wait for it, then reuse.
    route = Route(WEIGHTS, etag='"once"')
    route.before_get = lambda: files.wait_for("HEAD", "/shared.bin", 2)
    files.routes["/shared.bin"] = route
    results: list[Path] = []

    def fetcher() -> None:
        results.append(fetch(f"{files.url}/shared.bin", FetchSpec(), cache_root))

    threads = [threading.Thread(target=fetcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2
    assert results[0] == results[1]
    assert results[0].read_bytes() == WEIGHTS
    assert (files.count("HEAD", "/shared.bin"), files.count("GET", "/shared.bin")) == (2, 1)


def test_a_killed_fetcher_leaves_no_half_model(files: FileServer, cache_root: Path) -> None:
    release = threading.Event()
    files.routes["/big.safetensors"] = Route(WEIGHTS, etag='"b"', before_get=release.wait)
    uri = f"{files.url}/big.safetensors"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    fetcher = subprocess.Popen(
        [sys.executable, "-m", "uplion", "fetch-model", "--source", uri, "--cache",
         str(cache_root)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert files.wait_for("GET", "/big.safetensors", 1), "the fetcher started downloading"
    finally:
        fetcher.kill()
        fetcher.wait(30)
        release.set()
    assert [name for name in entries(cache_root) if not name.startswith(".partial/")] == []
    assert len(entries(cache_root)) == 1, "the killed fetcher's partial folder"

    path = fetch(uri, FetchSpec(sha256=sha256(WEIGHTS)), cache_root)
    assert path.read_bytes() == WEIGHTS
    assert entries(cache_root) == [path.parent.name], "the partial folder was cleared"


def test_a_cache_that_cannot_be_written_is_a_fetch_failure(
    files: FileServer, tmp_path: Path
) -> None:
    files.routes["/m.bin"] = Route(b"m")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(FetchError) as caught:
        fetch(f"{files.url}/m.bin", FetchSpec(), blocker)
    assert caught.value.reason == "FetchFailed"
    assert caught.value.message.startswith(f"{files.url}/m.bin: ")
