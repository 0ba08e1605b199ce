"""Where the monitoring tests find Prometheus' binaries (Debian's ``prometheus`` package)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "uplion" / "files" / "monitoring" / "rules.yaml"
DASHBOARDS = ROOT / "charts" / "uplion" / "dashboards"


def binary(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; the test fails naming the package if absent."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `apt-get install prometheus` (make test's "
                    "TEST_PACKAGES lists it)", pytrace=False)
    return found
