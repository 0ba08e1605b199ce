"""``uplion admin bootstrap --token-secret``: the first admin's token goes to a Secret, never to
the output, against kmock's Kubernetes emulator (the real CLI in a child process, with a
kubeconfig naming the emulator)."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import kmock
import pytest
import yaml

from uplion.accounts import db, tokens
from uplion.accounts.repository import Repository
from uplion.operator import kube

NS = "uplion-test"
SECRET = "uplion-admin-token"
SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class Run:
    code: int
    output: str


@pytest.fixture
def kubeconfig(tmp_path: Path, kmock: kmock.KubernetesEmulator) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
    }))
    return path


@pytest.fixture
async def client(kmock: kmock.KubernetesEmulator) -> AsyncIterator[kube.Kube]:
    connection = await kube.Kube.connect(host=str(kmock.url).rstrip("/"))
    yield connection
    await connection.close()


def declare_secrets(server: kmock.KubernetesEmulator) -> None:
    server.resources["v1/secrets"] = kmock.ResourceInfo(
        kind="Secret", namespaced=True, verbs={"get", "list", "create", "patch"})


async def bootstrap(tmp_path: Path, kubeconfig: Path, *args: str) -> Run:
    """The CLI in a child (the emulator keeps serving on this loop meanwhile)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "KUBECONFIG": str(kubeconfig),
           "UPLION_DATA_DIR": str(tmp_path / "data"), "UPLION_LOG_LEVEL": "info"}
    for name in ("POD_NAMESPACE", "UPLION_DATABASE_URL", "UPLION_REDIS_URL", "UPLION_BROKER_URL"):
        env.pop(name, None)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uplion", "admin", "bootstrap", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return Run(child.returncode, output.decode())


async def users(tmp_path: Path) -> int:
    store = db.Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'uplion.db'}")
    await store.start()
    try:
        async with store.session() as session:
            return await Repository(session).count_users()
    finally:
        await store.close()


async def is_the_admins_token(tmp_path: Path, token: str) -> bool:
    parsed = tokens.parse(token)
    assert parsed is not None, "the Secret holds no well-formed token"
    store = db.Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'uplion.db'}")
    await store.start()
    try:
        async with store.session() as session:
            principal = await Repository(session).principal_for(parsed[0])
    finally:
        await store.close()
    return principal is not None and principal.role == "admin" and tokens.verify(
        parsed[1], principal)


async def test_the_token_goes_to_the_secret_and_never_to_the_output(
    tmp_path: Path, kubeconfig: Path, kmock: kmock.KubernetesEmulator, client: kube.Kube
) -> None:
    declare_secrets(kmock)
    first = await bootstrap(tmp_path, kubeconfig, "--token-secret", SECRET, "--namespace", NS)
    assert first.code == 0, first.output
    assert f"its API token is in the Secret {NS}/{SECRET}, key 'token'" in first.output
    secret = await client.get("v1", "Secret", NS, SECRET)
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert await is_the_admins_token(tmp_path, token)
    assert token not in first.output
    assert "upl-" not in first.output.replace(tokens.redact(token), "")  # the id at most
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "admin-token"

    again = await bootstrap(tmp_path, kubeconfig, "--token-secret", SECRET, "--namespace", NS)
    assert again.code == 0, again.output
    assert "nothing to do" in again.output
    assert "it holds a token" in again.output
    kept = await client.get("v1", "Secret", NS, SECRET)
    assert kept["data"] == secret["data"]


async def test_no_admin_is_created_when_the_secret_cannot_be_written(
    tmp_path: Path, kubeconfig: Path, kmock: kmock.KubernetesEmulator
) -> None:
    """The API server refuses to create the Secret (as without RBAC rights, once): the Job fails
    before it touches the store, so no token is lost, and the next run bootstraps."""
    declare_secrets(kmock)
    forbidden = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                 "reason": "Forbidden", "message": "secrets is forbidden"}
    kmock[f"post /api/v1/namespaces/{NS}/secrets"][:1] << 403 << forbidden
    refused = await bootstrap(tmp_path, kubeconfig, "--token-secret", SECRET, "--namespace", NS)
    assert refused.code == 1, refused.output
    assert f"cannot write the Secret {NS}/{SECRET}: 403" in refused.output
    assert not (tmp_path / "data" / "uplion.db").exists() or await users(tmp_path) == 0
    done = await bootstrap(tmp_path, kubeconfig, "--token-secret", SECRET, "--namespace", NS)
    assert done.code == 0, done.output
    assert await users(tmp_path) == 1


async def test_the_namespace_is_required_outside_a_pod(
    tmp_path: Path, kubeconfig: Path
) -> None:
    run = await bootstrap(tmp_path, kubeconfig, "--token-secret", SECRET)
    assert run.code == 2, run.output
    assert "--namespace" in run.output
