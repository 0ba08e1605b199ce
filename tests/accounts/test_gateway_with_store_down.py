"""A gateway on PostgreSQL keeps serving cached tokens while the database is down."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests import helpers
from tests.stores import PostgresServer

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "still here"}]}


def _chat(url: str, token: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10,
                      headers={"Authorization": f"Bearer {token}"})


@pytest.mark.redis
def test_cached_tokens_pass_and_revocations_hold_while_postgres_is_down(
    stoppable_postgres: PostgresServer, clean_redis: str, tmp_path: Path
) -> None:
    env = {"UPLION_DATABASE_URL": stoppable_postgres.create_database(),
           "UPLION_REDIS_URL": clean_redis, "UPLION_DATA_DIR": str(tmp_path / "data")}
    admin_token = helpers.bootstrap_store(tmp_path, env)
    worker = helpers.spawn("worker", "--models", str(helpers.ECHO_MODELS), "--broker",
                           clean_redis, "--model", "echo", log=tmp_path / "worker.log", env=env)
    try:
        with helpers.platform(tmp_path, broker_url=clean_redis, command="gateway",
                              env=env) as served:
            admin = {"Authorization": f"Bearer {admin_token}"}
            user = httpx.post(f"{served.url}/admin/users", headers=admin,
                              json={"name": "steady"}).json()
            kept, revoked = (
                httpx.post(f"{served.url}/admin/tokens", headers=admin,
                           json={"user_id": user["id"], "name": name}).json()["token"]
                for name in ("kept", "revoked")
            )
            assert _chat(served.url, kept).status_code == 200
            assert _chat(served.url, revoked).status_code == 200
            revoked_id = revoked.split("-")[1]
            response = httpx.post(f"{served.url}/admin/tokens/{revoked_id}/revoke", headers=admin)
            assert response.status_code == 200

            stoppable_postgres.stop()
            assert _chat(served.url, kept).status_code == 200
            refused = _chat(served.url, revoked)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "api_key_revoked"
            uncached = _chat(served.url, "upl-000000000000-" + "x" * 43)
            assert uncached.status_code == 503
            assert uncached.json()["error"]["code"] == "account_store_unavailable"
    finally:
        helpers.stop(worker)
