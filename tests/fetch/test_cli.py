"""``uplion fetch-model``: through typer's runner, and once as the init container runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.fetch.helpers import sha256
from tests.fetch.servers import FileServer, Route
from uplion.cli import app

runner = CliRunner()


def models_file(tmp_path: Path, source: str, digest: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        f"  - name: clf\n    version: '3'\n    source: {source}\n"
        f"    fetch: {{sha256: '{digest}'}}\n    engine: {{kind: onnx}}\n"
    )
    return path


def test_a_source_fetched_into_the_cache(files: FileServer, tmp_path: Path) -> None:
    files.routes["/m.onnx"] = Route(b"onnx", etag='"1"')
    cache = tmp_path / "cache"
    result = runner.invoke(app, ["fetch-model", "--source", f"{files.url}/m.onnx",
                                 "--sha256", sha256(b"onnx"), "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.parent.parent == cache
    assert path.read_bytes() == b"onnx"


def test_a_models_file_entry(files: FileServer, tmp_path: Path) -> None:
    files.routes["/m.onnx"] = Route(b"onnx", etag='"1"')
    spec = models_file(tmp_path, f"{files.url}/m.onnx", sha256(b"onnx"))
    result = runner.invoke(app, ["fetch-model", "--models-file", str(spec), "--model", "clf@3",
                                 "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()).read_bytes() == b"onnx"


def test_a_fetch_error_exits_1_with_its_reason(files: FileServer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["fetch-model", "--source", f"{files.url}/absent.onnx",
                                 "--cache", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(
        f"SourceNotFound: {files.url}/absent.onnx: the server answered 404"
    )
    assert result.stdout == ""


@pytest.mark.parametrize("args", [
    [],
    ["--source", "x", "--models-file", "models.yaml", "--model", "clf"],
    ["--models-file", "models.yaml"],
    ["--source", "x", "--sha256", "not-a-digest"],
    ["--source", "x", "--sha256", "a=" + "0" * 64, "--sha256", "0" * 64],
    ["--models-file", "models.yaml", "--model", "absent"],
])
def test_usage_errors_exit_2(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             files: FileServer) -> None:
    monkeypatch.chdir(tmp_path)
    models_file(tmp_path, f"{files.url}/m.onnx", "0" * 64)
    result = runner.invoke(app, ["fetch-model", *args])
    assert result.exit_code == 2, result.output


def test_the_init_container_command_links_the_artifact(files: FileServer, tmp_path: Path) -> None:
    files.routes["/v1.onnx"] = Route(b"one", etag='"1"')
    files.routes["/v2.onnx"] = Route(b"two", etag='"2"')
    link = tmp_path / "cache" / ".links" / "clf@3"
    env = {**os.environ, "UPLION_MODEL_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(Path(__file__).parents[2] / "src")}

    def run(source: str, digest: str) -> subprocess.CompletedProcess[str]:
        command = ["fetch-model", "--models-file", str(models_file(tmp_path, source, digest)),
                   "--model", "clf@3", "--link", str(link)]
        return subprocess.run([sys.executable, "-m", "uplion", *command], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    first = run(f"{files.url}/v1.onnx", sha256(b"one"))
    assert first.returncode == 0, first.stderr
    assert link.is_symlink()
    assert link.resolve() == Path(first.stdout.strip()).resolve()
    assert link.read_bytes() == b"one"
    assert "fetched" in first.stderr, "progress goes to the logs"
    second = run(f"{files.url}/v2.onnx", sha256(b"two"))
    assert second.returncode == 0, second.stderr
    assert link.read_bytes() == b"two"
    assert [p.name for p in link.parent.iterdir()] == ["clf@3"], "no temporary link left"
