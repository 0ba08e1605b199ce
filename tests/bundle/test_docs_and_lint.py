"""Chart READMEs match their values.yaml, and the bundle's YAML passes yamllint."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.bundle import conftest, values_docs


@pytest.mark.parametrize("chart", ["uplion", "uplion-model"])
def test_values_table_has_not_drifted(chart: str) -> None:
    path = conftest.CHARTS / chart
    assert (path / "README.md").read_text() == values_docs.render_readme(path), (
        f"run: python -m tests.bundle.values_docs charts/{chart}"
    )
    assert len(values_docs.rows(path / "values.yaml")) >= 10


def test_yamllint() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "-s", "-c", str(conftest.ROOT / ".yamllint"),
         "charts", ".yamllint"],
        capture_output=True, text=True, check=False, cwd=conftest.ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
