"""Tokens, roles, allow-lists, rate limits, quotas, usage and ext_authz through `uplion run`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests import helpers

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    with helpers.platform(tmp_path_factory.mktemp("auth")) as running:
        yield running


@pytest.fixture
def admin(served: helpers.Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=served.headers, timeout=10) as client:
        yield client


def new_token(admin: httpx.Client, user: str, **token: Any) -> tuple[str, str]:
    """A new member (unless it exists) and a token of it: (user id, full token)."""
    users = {u["name"]: u["id"] for u in admin.get("/admin/users").json()["data"]}
    user_id = users.get(user)
    if user_id is None:
        created = admin.post("/admin/users", json={"name": user})
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
    response = admin.post("/admin/tokens", json={"user_id": user_id, **token})
    assert response.status_code == 201, response.text
    return user_id, response.json()["token"]


def chat(served: helpers.Served, token: str | None, body: dict[str, Any] = CHAT) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_first_start_printed_an_admin_token(served: helpers.Served) -> None:
    assert served.admin_token is not None
    assert served.admin_token.startswith("upl-")
    assert served.log.read_text().count(served.admin_token) == 1


def test_missing_and_wrong_tokens_are_401(served: helpers.Served) -> None:
    missing = chat(served, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    token = served.admin_token or ""
    wrong = chat(served, token[:-4] + "AAAA")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert token[-8:] not in wrong.text
    assert chat(served, "not-a-token").status_code == 401


def test_x_api_key_header_is_accepted(served: helpers.Served) -> None:
    response = httpx.post(f"{served.url}/v1/chat/completions", json=CHAT,
                          headers={"x-api-key": served.admin_token or ""})
    assert response.status_code == 200


def test_revoked_token_is_refused_with_a_message(
    served: helpers.Served, admin: httpx.Client
) -> None:
    _, token = new_token(admin, "revokee")
    assert chat(served, token).status_code == 200
    token_id = token.split("-")[1]
    assert admin.post(f"/admin/tokens/{token_id}/revoke").status_code == 200
    refused = chat(served, token)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_revoked"
    assert "revoked" in refused.json()["error"]["message"]


def test_expired_token_is_refused(served: helpers.Served, admin: httpx.Client) -> None:
    _, token = new_token(admin, "expiring", expires_in_days=1.5 / 86400)
    time.sleep(2)
    refused = chat(served, token)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_expired"


def test_member_cannot_use_the_admin_api(served: helpers.Served, admin: httpx.Client) -> None:
    _, token = new_token(admin, "member-a")
    response = httpx.get(f"{served.url}/admin/users", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_permissions"


def test_model_allow_list(served: helpers.Served, admin: httpx.Client) -> None:
    _, token = new_token(admin, "member-b", allowed_models=["echo-slow"])
    refused = chat(served, token)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=token, max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["echo-slow"]
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "x"}]
            )


def test_requests_per_minute_limit(served: helpers.Served, admin: httpx.Client) -> None:
    _, token = new_token(admin, "limited", limits={"requests_per_minute": 3})
    answers = [chat(served, token) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "2"
    refused = answers[3]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 61  # a request counts 60 to 61 s
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    with openai.OpenAI(base_url=f"{served.url}/v1", api_key=token, max_retries=0) as client, \
            pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])


def test_quota_is_reserved_then_settled(served: helpers.Served, admin: httpx.Client) -> None:
    # Each request reserves 8 prompt (estimate) + 10 output tokens and, settled, uses 3 + 3:
    # the n-th is admitted while 6 (n - 1) + 18 <= 40, so 4 pass; without settling only 2 would.
    _, token = new_token(admin, "quota", quota={"tokens": 40, "period": "day"})
    body = {**CHAT, "max_tokens": 10}
    codes = []
    for _ in range(6):
        codes.append(chat(served, token, body).status_code)
        time.sleep(0.05)  # settlement runs after the response
    assert codes == [200, 200, 200, 200, 429, 429]
    refused = chat(served, token, {**CHAT, "max_tokens": 30})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"


def test_usage_is_billed_and_reported(served: helpers.Served, admin: httpx.Client) -> None:
    user_id, token = new_token(admin, "billed")
    for _ in range(3):
        assert chat(served, token).status_code == 200
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = admin.get("/admin/usage", params={"user_id": user_id}).json()["data"]
        if rows and rows[0]["requests"] == 3:
            break
        time.sleep(0.3)
    assert len(rows) == 1
    assert rows[0]["model"] == "echo"
    assert rows[0]["requests"] == 3
    assert rows[0]["completion_tokens"] == 9


def test_ext_authz_check(served: helpers.Served, admin: httpx.Client) -> None:
    user_id, token = new_token(admin, "mesh", allowed_models=["echo"])
    allowed = httpx.post(f"{served.url}/authz/check/v1/chat/completions",
                         headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200
    assert allowed.headers["x-uplion-user"] == user_id
    assert allowed.headers["x-uplion-token-id"] == token.split("-")[1]
    assert httpx.get(f"{served.url}/authz/check/anything").status_code == 401
    other_model = httpx.post(f"{served.url}/authz/check", json={"model": "echo-slow"},
                             headers={"Authorization": f"Bearer {token}"})
    assert other_model.status_code == 403


def test_admin_api_errors(admin: httpx.Client) -> None:
    assert admin.get("/admin/users/u_nope").status_code == 404
    assert admin.post("/admin/users", json={"name": "dup"}).status_code == 201
    conflict = admin.post("/admin/users", json={"name": "dup"})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "conflict"
    bad = admin.post("/admin/users", json={"name": "x", "role": "god"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "role"
