"""The deployment API cannot name a worker's variables or files as API keys.

An admin token could otherwise deploy an upstream model whose "key" is any environment variable
(``api_key_env: DATABASE_URL``) or file (``api_key_file: /etc/shadow``) of the worker, sent as a
bearer token to a ``base_url`` of its choosing. Through ``POST /v1/modelDeployment`` keys come from
the keys folder (``$UPLION_DATA_DIR/keys/<account>``, one machine); models files written by the
machine's operator may still name variables and files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import helpers
from tests.worker.fake_provider import FakeProvider

KEY = "sk-from-the-keys-folder-41c9"


def upstream(base_url: str, account: dict[str, Any], name: str = "remote") -> dict[str, Any]:
    return {"model": {"name": name, "engine": {"kind": "openai-upstream", "options": {
        "base_url": base_url, "model": "fake-model", "accounts": [account]}}}}


@pytest.fixture(scope="module")
def provider() -> Any:
    with FakeProvider() as served:
        served.script(KEY)
        yield served


def test_keys_come_from_the_keys_folder_not_from_variables_or_files(
    tmp_path: Path, provider: FakeProvider
) -> None:
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "primary").write_text(KEY + "\n")
    with helpers.platform(tmp_path, env={"UPLION_DATA_DIR": str(data)}) as served, \
            httpx.Client(base_url=served.url, headers=served.headers, timeout=20) as admin:
        for field, value in (("api_key_env", "UPLION_DATABASE_URL"),
                             ("api_key_file", "/etc/passwd")):
            refused = admin.post("/v1/modelDeployment", json=upstream(
                provider.base_url, {"name": "primary", field: value}))
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == f"model.engine.options.accounts[0].{field}"
            assert f"'{field}'" in error["message"]
            assert "keys folder" in error["message"]
            assert "secretRefs" in error["message"]
        server = admin.post("/v1/modelDeployment", json={"model": {
            "name": "served", "engine": {"kind": "openai-server", "options": {
                "command": ["true"], "api_key_env": "UPLION_DATABASE_URL"}}}})
        assert server.status_code == 400, server.text
        assert server.json()["error"]["param"] == "model.engine.options.api_key_env"
        for kind, option, value in (("openai-server", "command", ["sh", "-c", "id"]),
                                    ("vllm", "env", {"LD_PRELOAD": "/tmp/evil.so"})):
            process = admin.post("/v1/modelDeployment", json={"model": {
                "name": "served", "source": "/tmp", "engine": {
                    "kind": kind, "options": {option: value}}}})
            assert process.status_code == 400, process.text
            error = process.json()["error"]
            assert error["param"] == f"model.engine.options.{option}"
            assert "run any program" in error["message"]
        assert admin.get("/v1/modelDeployment").json()["data"] == []

        created = admin.post("/v1/modelDeployment",
                             json=upstream(provider.base_url, {"name": "primary"}))
        assert created.status_code == 201, created.text
        chat = {"model": "remote", "messages": [{"role": "user", "content": "from the folder"}]}
        answer = admin.post("/v1/chat/completions", json=chat)
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "from the folder"
        assert provider.calls[KEY] >= 1
