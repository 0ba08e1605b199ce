"""Molecule scenarios without Docker: each role that can run in a chroot converges in a Debian
bookworm chroot (debootstrap, cached in .cache/molecule-chroot), is run again to prove it
idempotent, and is verified (molecule/<scenario>/verify.yml).

The chroot needs root: `make test` runs as root here and in CI. Without root the test fails and
says so; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from tests.bundle import ansible_env
from tests.bundle.ansible_env import ROOT

SCENARIOS = sorted(path.parent.name for path in (ROOT / "molecule").glob("*/molecule.yml"))


def test_the_node_roles_have_scenarios() -> None:
    assert "node_prep" in SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("molecule's chroot scenarios need root (chroot, debootstrap)", pytrace=False)
    if shutil.which("debootstrap", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
        pytest.fail("debootstrap is missing: make system-packages installs it", pytrace=False)
    done = ansible_env.run(["molecule", "test", "--scenario-name", scenario], timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20000:]
    for step in ("converge", "idempotence", "verify"):
        assert f"[{scenario} > {step}] Executed: Successful" in output, output[-20000:]


def test_node_prep_reruns_after_the_gpu_toolkit() -> None:
    """The scenario runs node_prep again after doing what the GPU operator's toolkit does to
    containerd's configuration (side_effect.yml): that rerun must be idempotent (no change, so
    no restart of containerd) and verify.yml checks the toolkit's runtime is still in effect."""
    scenario = yaml.safe_load((ROOT / "molecule" / "node_prep" / "molecule.yml").read_text())
    sequence = scenario["scenario"]["test_sequence"]
    after = sequence[sequence.index("side_effect") + 1:]
    assert after[:2] == ["idempotence", "verify"]
