"""`uplion admin` and `uplion status` against a running platform."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests import helpers


def uplion(served: helpers.Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UPLION_URL": served.url, "UPLION_TOKEN": served.admin_token or "",
           "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    return subprocess.run([sys.executable, "-m", "uplion", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_admin_cli_manages_users_and_tokens(tmp_path: Path) -> None:
    with helpers.platform(tmp_path) as served:
        created = uplion(served, "admin", "users", "create", "carol", "--rpm", "5",
                         "--models", "echo")
        assert created.returncode == 0, created.stderr
        user = json.loads(created.stdout)
        assert user["limits"]["requests_per_minute"] == 5
        assert user["allowed_models"] == ["echo"]

        made = uplion(served, "admin", "tokens", "create", user["id"], "--name", "ci")
        assert made.returncode == 0, made.stderr
        token = json.loads(made.stdout)["token"]
        assert re.search(rf"^\s+{re.escape(token)}$", made.stderr, re.MULTILINE)
        chat = {"model": "echo", "messages": [{"role": "user", "content": "cli"}]}
        headers = {"Authorization": f"Bearer {token}"}
        ok = httpx.post(f"{served.url}/v1/chat/completions", json=chat, headers=headers)
        assert ok.status_code == 200

        listed = uplion(served, "admin", "tokens", "list", "--user", user["id"])
        assert token not in listed.stdout
        assert [t["name"] for t in json.loads(listed.stdout)] == ["ci"]

        token_id = token.split("-")[1]
        assert uplion(served, "admin", "tokens", "revoke", token_id).returncode == 0
        refused = httpx.post(f"{served.url}/v1/chat/completions", json=chat, headers=headers)
        assert refused.status_code == 401

        missing = uplion(served, "admin", "users", "update", "u_missing", "--role", "admin")
        assert missing.returncode == 1
        assert "error 404" in missing.stderr

        status = uplion(served, "status")
        assert status.returncode == 0, status.stderr
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
        assert rows["echo@1"][1] == "Running"
        assert rows["cold@1"][1] == "Pending"
