"""`/v1/modelDeployment` on the local backend: deploy, call, scale, persist, delete."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests import helpers

ECHO = {"name": "deployed-echo", "engine": {"kind": "test-echo"}, "concurrency": 2}


def wait_phase(admin: httpx.Client, deployment_id: str, phase: str, replicas: int) -> None:
    deadline = time.monotonic() + 20
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = admin.get(f"/v1/modelDeployment/{deployment_id}").json()["status"]
        if status["phase"] == phase and status["replicas"] == replicas:
            return
        time.sleep(0.2)
    raise AssertionError(f"never {phase} with {replicas} replicas: {status}")


def test_deployment_lifecycle(tmp_path: Path) -> None:
    data = {"UPLION_DATA_DIR": str(tmp_path / "data")}
    with helpers.platform(tmp_path, env=data) as served, \
            httpx.Client(base_url=served.url, headers=served.headers, timeout=20) as admin:
        created = admin.post("/v1/modelDeployment", json={
            "type": "cpu", "model": ECHO, "replicas": 1,
            "request_res": {"cpu": "250m", "memory": "256Mi"}, "limit_res": {"cpu": "1"},
        })
        assert created.status_code == 201, created.text
        deployment = created.json()
        assert deployment["object"] == "model.deployment"
        assert deployment["endpoints"]["chat_completions"] == "/v1/chat/completions"
        assert deployment["endpoints"]["v2_infer"] == (
            "/v2/models/deployed-echo/versions/1/infer")
        assert deployment["request_res"] == {"cpu": "250m", "memory": "256Mi"}
        wait_phase(admin, deployment["id"], "Running", 1)

        chat = {"model": "deployed-echo", "messages": [{"role": "user", "content": "hi there"}]}
        answer = admin.post("/v1/chat/completions", json=chat)
        assert answer.json()["choices"][0]["message"]["content"] == "hi there"
        assert [d["id"] for d in admin.get("/v1/modelDeployment").json()["data"]] == [
            deployment["id"]]

        patched = admin.patch(f"/v1/modelDeployment/{deployment['id']}", json={"replicas": 2})
        assert patched.status_code == 200, patched.text
        assert patched.json()["replicas"] == 2
        wait_phase(admin, deployment["id"], "Running", 2)

        again = admin.post("/v1/modelDeployment", json={"model": ECHO})
        assert again.status_code == 409
        bad = admin.post("/v1/modelDeployment", json={"model": {**ECHO, "name": "x",
                                                                "engine": {"kind": "nope"}}})
        assert bad.status_code == 400
        assert "nope" in bad.json()["error"]["message"]
        typo = admin.post("/v1/modelDeployment", json={"model": ECHO, "replica": 2})
        assert typo.status_code == 400
        assert typo.json()["error"]["param"] == "replica"
        for kind, gpus in (("gpu", 0), ("cpu", 1)):  # a GPU model without GPUs, or the reverse
            mismatched = admin.post("/v1/modelDeployment", json={
                "type": kind, "gpus": gpus, "model": {**ECHO, "name": "x"}})
            assert mismatched.status_code == 400
            assert mismatched.json()["error"]["param"] == "gpus"

    admin_headers = served.headers  # the second start finds the store, and prints no token
    with helpers.platform(tmp_path, env=data) as served, \
            httpx.Client(base_url=served.url, headers=admin_headers, timeout=20) as admin:
        restored = admin.get(f"/v1/modelDeployment/{deployment['id']}")
        assert restored.status_code == 200
        wait_phase(admin, deployment["id"], "Running", 2)
        assert admin.delete(f"/v1/modelDeployment/{deployment['id']}").json()["deleted"]
        assert admin.get(f"/v1/modelDeployment/{deployment['id']}").status_code == 404
        gone = admin.post("/v1/chat/completions", json=chat)
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "model_not_found"


def test_deployments_need_an_admin(tmp_path: Path) -> None:
    with helpers.platform(tmp_path) as served:
        assert httpx.get(f"{served.url}/v1/modelDeployment").status_code == 401
