"""The admin dashboard in Chromium: tokens, deployments, traffic split, usage charts and CSV."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from tests import helpers
from tests.web import ui
from tests.web.conftest import PHONE


def _open_admin(page: Page, served: helpers.Served) -> None:
    ui.sign_in(page, served.url, served.admin_token or "", path="/ui/admin")
    expect(page.locator("#models-table tbody tr").first).to_be_visible()


def _accept(dialog: Dialog) -> None:
    dialog.accept()


def test_admin_creates_a_token_shows_it_once_and_revokes_it(
    served: helpers.Served, page: Page, browser: Browser, screenshots: Path
) -> None:
    _open_admin(page, served)
    page.locator("#user-name").fill("carol")
    page.locator("#user-rpm").fill("100")
    page.get_by_role("button", name="Create user").click()
    carol = page.locator('#users-table tr[data-user="carol"]')
    expect(carol).to_contain_text("100 req/min")

    page.locator("#token-user").select_option(label="carol (member)")
    page.locator("#token-name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    shown = page.locator("#new-token-value")
    expect(page.locator("#new-token")).to_be_visible()
    token = shown.input_value()
    assert token.startswith("upl-")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == token
    ui.shoot(page, screenshots, "admin-new-token")

    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(served.url + "/v1/models", headers=headers).status_code == 200
    token_id = token.split("-")[1]
    row = page.locator(f'#tokens-table tr[data-token="{token_id}"]')
    row.get_by_role("button", name="Limits").click()
    page.locator("#limits-rpm").fill("5")
    page.locator("#limits-quota").fill("5000")
    page.locator("#limits-period").select_option("day")
    page.get_by_role("button", name="Save").click()
    expect(row).to_contain_text("5 req/min")
    expect(row).to_contain_text("5,000 tokens per day")
    stored = httpx.get(f"{served.url}/admin/tokens/{token_id}", headers=served.headers).json()
    assert stored["limits"]["requests_per_minute"] == 5
    assert stored["quota"] == {"tokens": 5000, "period": "day"}

    page.get_by_role("button", name="Done").click()
    expect(page.locator("#new-token")).to_be_hidden()
    assert shown.input_value() == ""  # the secret is not kept in the page

    page.once("dialog", _accept)
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    refused = httpx.get(served.url + "/v1/models", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_revoked"
    ui.shoot(page, screenshots, "admin-token-revoked")

    context = browser.new_context()
    other = context.new_page()
    ui.sign_in(other, served.url, token)
    expect(other.locator("#sign-in-error")).to_have_text(
        "Your API token was not accepted: This API key has been revoked.")
    ui.shoot(other, screenshots, "chat-revoked-token")
    context.close()


def test_a_model_deployed_from_the_form_reaches_running_scales_and_goes(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    _open_admin(page, served)
    page.locator("#deploy-name").fill("web-echo")
    page.locator("#deploy-engine").select_option("test-echo")
    page.locator("#deploy-options").fill('{"token_delay_s": 0.01}')
    page.locator("#deploy-concurrency").fill("2")
    page.locator("#deploy-timeout").fill("30")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.locator("#deploy-result")).to_contain_text(
        re.compile(r"Deployed web-echo@1 \([0-9a-f]{12}\)")
    )
    row = page.locator('#models-table tr[data-model="web-echo@1"]')
    expect(row.locator(".phase")).to_have_text("Running", timeout=60_000)
    answer = httpx.post(served.url + "/v1/chat/completions", headers=served.headers, json={
        "model": "web-echo", "messages": [{"role": "user", "content": "deployed and answering"}],
    }, timeout=30)
    assert answer.json()["choices"][0]["message"]["content"] == "deployed and answering"
    ui.shoot(page, screenshots, "admin-deployed")

    row.get_by_role("button", name="Scale").click()
    page.locator("#scale-replicas").fill("2")
    page.locator("#scale-max").fill("3")
    page.get_by_role("button", name="Apply").click()
    expect(row).to_contain_text("min 2, max 3")
    expect(row).to_contain_text("2 live", timeout=60_000)
    deployment = httpx.get(served.url + "/v1/modelDeployment", headers=served.headers).json()
    assert [(d["name"], d["replicas"]) for d in deployment["data"]] == [("web-echo", 2)]

    page.once("dialog", _accept)
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    remaining = httpx.get(served.url + "/v1/modelDeployment", headers=served.headers).json()
    assert remaining["data"] == []


def test_the_canary_weight_is_set_from_the_dashboard(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    models = httpx.get(served.url + "/admin/models", headers=served.headers).json()["data"]
    if "traffic" not in models[0]:
        pytest.skip("this gateway has no traffic split API yet")
    created = []
    for version in ("1", "2"):
        answer = httpx.post(served.url + "/v1/modelDeployment", headers=served.headers, json={
            "model": {"name": "web-canary", "version": version, "engine": {"kind": "test-echo"}},
        })
        assert answer.status_code == 201, answer.text
        created.append(answer.json()["id"])
    _open_admin(page, served)
    stable = page.locator('#models-table tr[data-model="web-canary@1"]')
    canary = page.locator('#models-table tr[data-model="web-canary@2"]')
    expect(stable).to_contain_text("stable · 100 %")
    stable.get_by_role("button", name="Traffic").click()
    page.locator("#traffic-canary").select_option("2")
    page.locator("#traffic-weight").fill("25")
    page.get_by_role("button", name="Apply").click()
    expect(stable).to_contain_text("stable · 75 %")
    expect(canary).to_contain_text("canary · 25 %")
    split: dict[str, Any] = httpx.get(
        served.url + "/admin/models/web-canary/traffic", headers=served.headers
    ).json()
    assert split["stable"] == "1"
    assert split["canary"] == {"version": "2", "weight": 25}
    ui.shoot(page, screenshots, "admin-canary")
    for deployment_id in created:
        httpx.delete(f"{served.url}/v1/modelDeployment/{deployment_id}", headers=served.headers)


def _usage(served: helpers.Served) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = httpx.get(
        served.url + "/admin/usage", headers=served.headers
    ).json()["data"]
    return rows


def test_usage_is_charted_per_model_and_user_and_exported_as_csv(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    before = sum(row["requests"] for row in _usage(served) if row["model"] == "echo")
    for text in ("one", "two words", "three more words"):
        httpx.post(served.url + "/v1/chat/completions", headers=served.headers, json={
            "model": "echo", "messages": [{"role": "user", "content": text}],
        }, timeout=30).raise_for_status()
    deadline = time.monotonic() + 20
    while (requests := sum(r["requests"] for r in _usage(served) if r["model"] == "echo")) \
            < before + 3:
        assert time.monotonic() < deadline, "billing never recorded the requests"
        time.sleep(0.3)

    _open_admin(page, served)
    chart = page.locator("#usage-chart svg")
    expect(chart).to_have_attribute("aria-label", "tokens per day and model: "
                                    f"{_tokens(_usage(served)):,} in all")
    assert chart.locator("rect").count() >= 1
    expect(page.locator("#usage-legend")).to_contain_text("echo")
    echo_row = page.locator("#usage-table tbody tr", has_text="echo").first
    expect(echo_row.locator("td").first).to_have_text(f"{requests:,}")

    page.locator("#usage-group").select_option("user_id")
    expect(page.locator("#usage-legend")).to_contain_text("admin")
    ui.shoot(page, screenshots, "admin-usage")

    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    saved = Path(download.value.path())
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert download.value.suggested_filename.startswith("uplion-usage-")
    assert sum(int(row["requests"]) for row in rows if row["model"] == "echo") == requests
    assert {row["user_name"] for row in rows} >= {"admin"}

    page.set_viewport_size(PHONE)
    ui.shoot(page, screenshots, "admin-phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def _tokens(rows: list[dict[str, Any]]) -> int:
    return sum(row["prompt_tokens"] + row["completion_tokens"] for row in rows)
