"""The uplion image, built for real (scripts/image-build.sh: buildah, cached by its inputs), and
the objects the charts render for a release whose Redis and PostgreSQL are the tests' own.

``uplion_image`` is the image's name (``localhost/uplion:cpu-<hash>``) for any test that runs it,
``podman kube play`` tests included. Building needs root (buildah's chroot isolation) and the
Debian packages `make test` installs; without them the session fails and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.bundle.conftest import ROOT, documents, helm, helm_env
from tests.containers import pods
from tests.stores import PostgresServer

__all__ = ["helm", "helm_env"]

BUILD_TIMEOUT_S = 3600


@pytest.fixture(scope="session")
def uplion_image() -> str:
    """The CPU image built from this working tree (a no-op when its inputs are unchanged)."""
    if os.geteuid() != 0:
        pytest.fail("building the image needs root (buildah --isolation chroot)", pytrace=False)
    for tool in ("buildah", "podman", "runc", "debootstrap"):
        if shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
            pytest.fail(f"{tool} is missing: `make system-packages` installs it", pytrace=False)
    done = subprocess.run([str(ROOT / "scripts" / "image-build.sh")], capture_output=True,
                          text=True, check=False, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"scripts/image-build.sh failed:\n{done.stderr[-20000:]}", pytrace=False)
    return done.stdout.strip().splitlines()[-1]


def helm_template(
    helm: Path, env: dict[str, str], chart: str, *values: str
) -> list[dict[str, Any]]:
    command = [str(helm), "template", "uplion", str(ROOT / "charts" / chart),
               "--namespace", pods.NAMESPACE, *[f"--set={value}" for value in values]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return documents(done.stdout)


@pytest.fixture(scope="session")
def release(
    helm: Path, helm_env: dict[str, str], redis_url: str, postgres_server: PostgresServer,
) -> list[dict[str, Any]]:
    """charts/uplion rendered with the defaults but for the URLs of the tests' Redis and
    PostgreSQL (a database of its own), as the containers reach them."""
    database = postgres_server.create_database().replace("127.0.0.1", pods.HOST)
    return helm_template(helm, helm_env, "uplion",
                         f"secrets.brokerUrl={redis_url.replace('127.0.0.1', pods.HOST)}",
                         f"secrets.databaseUrl={database}")


@pytest.fixture(scope="session")
def objects(release: list[dict[str, Any]]) -> pods.Objects:
    found = pods.Objects()
    for obj in release:
        found.add(obj)
    return found


def pod_spec(release: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    """The pod template of the release's ``kind`` object of ``component``."""
    for obj in release:
        labels = obj["metadata"].get("labels") or {}
        if obj["kind"] == kind and labels.get("app.kubernetes.io/component") == component:
            spec: dict[str, Any] = obj["spec"]["template"]["spec"]
            return spec
    raise AssertionError(f"the chart renders no {kind} of component {component!r}")
