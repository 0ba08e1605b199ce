"""The chat page in Chromium: sign in, streamed answers, stop, history, errors in plain words."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, expect
from prometheus_client.parser import text_string_to_metric_families

from tests import helpers
from tests.web import ui
from tests.web.conftest import PHONE

LONG_TEXT = " ".join(f"word{i}" for i in range(150))


def _answered(served: helpers.Served, model: str, status: str) -> float:
    """The gateway's count of requests to ``model`` answered with ``status``."""
    scrape = httpx.get(served.url + "/metrics", headers=served.headers)
    families = text_string_to_metric_families(scrape.text)
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == "uplion_requests_total" and sample.labels["model"] == model
               and sample.labels["status"] == status)


def _wait_phase(served: helpers.Served, model: str, phase: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = httpx.get(served.url + "/v1/models", headers=served.headers).json()["data"]
        if next(m for m in models if m["id"] == model)["status"]["phase"] == phase:
            return
        time.sleep(0.2)
    raise AssertionError(f"{model} never became {phase}")


def _member_token(served: helpers.Served, name: str, rpm: int | None = None) -> str:
    user = httpx.post(served.url + "/admin/users", headers=served.headers, json={
        "name": name, "limits": {"requests_per_minute": rpm},
    }).json()
    token = httpx.post(served.url + "/admin/tokens", headers=served.headers,
                       json={"user_id": user["id"], "name": "browser"})
    assert token.status_code == 201, token.text
    return str(token.json()["token"])


def test_a_wrong_token_is_refused_in_plain_words(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    ui.sign_in(page, served.url, "upl-0123456789ab-not-the-secret")
    expect(page.locator("#sign-in-error")).to_contain_text("Your API token was not accepted")
    expect(page.locator("#signed-in")).to_be_hidden()
    ui.shoot(page, screenshots, "chat-sign-in-refused")


def test_an_answer_streams_word_by_word_renders_and_stays_in_history(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    ui.open_chat(page, served.url, served.admin_token or "")
    expect(page.locator("#model-status")).to_have_text("Running")
    ui.choose_model(page, "echo-slow")
    page.evaluate(ui.WATCH_STREAM)
    question = "Streams are **bold** and `code` survives, as does <i>markup</i>"
    ui.send(page, question)
    meta = page.locator(".message.assistant .meta").last
    expect(meta).to_contain_text("9 prompt + 9 completion = 18 tokens", timeout=30_000)
    lengths = page.evaluate("window.streamedLengths")
    assert len(set(lengths)) >= 5, lengths  # seen growing, piece by piece
    answer = page.locator(".message.assistant .body").last
    expect(answer.locator("strong")).to_have_text("bold")
    expect(answer.locator("code")).to_have_text("code")
    expect(answer).to_contain_text("<i>markup</i>")
    ui.shoot(page, screenshots, "chat-answer")

    page.reload()  # the conversation is kept in the browser
    expect(page.locator(".conversations .open")).to_have_text([question[:59] + "…"])
    expect(page.locator(".message.assistant .body strong")).to_have_text("bold")
    expect(page.get_by_label("Model")).to_have_value("echo-slow")
    page.set_viewport_size(PHONE)
    ui.shoot(page, screenshots, "chat-phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_stop_ends_the_stream_and_cancels_the_task(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    cancelled_before = _answered(served, "echo-slow", "499")
    ui.open_chat(page, served.url, served.admin_token or "")
    ui.choose_model(page, "echo-slow")
    ui.send(page, LONG_TEXT)
    busy = page.locator('.message.assistant[aria-busy="true"] .body')
    expect(busy).to_contain_text("word3")
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    page.get_by_role("button", name="Stop").click()
    meta = page.locator(".message.assistant .meta").last
    expect(meta).to_contain_text("stopped")
    stopped_at = ui.last_answer(page)
    assert "word149" not in stopped_at
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    # The gateway saw the client leave and cancelled the task (status 499).
    deadline = time.monotonic() + 10
    while _answered(served, "echo-slow", "499") <= cancelled_before:
        assert time.monotonic() < deadline, "the gateway never cancelled the stopped task"
        time.sleep(0.2)
    page.wait_for_timeout(500)
    assert ui.last_answer(page) == stopped_at  # nothing more arrived
    ui.shoot(page, screenshots, "chat-stopped")


def test_over_the_rate_limit_says_when_to_retry(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    token = _member_token(served, "dora", rpm=1)
    ui.open_chat(page, served.url, token)
    ui.choose_model(page, "echo")
    ui.send(page, "first question")
    expect(page.locator(".message.assistant .meta").last).to_contain_text("completion")
    ui.send(page, "second question")
    error = page.locator(".message.assistant .error").last
    expect(error).to_have_text(re.compile(r"^Rate limit reached — try again in \d+ s\.$"))
    seconds = int(re.findall(r"\d+", error.inner_text())[0])
    assert 1 <= seconds <= 61  # a request counts for 60 to 61 s (one-second slots)
    ui.shoot(page, screenshots, "chat-rate-limited")


def test_a_failed_model_shows_its_reason(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    _wait_phase(served, "broken", "Failed", 30)
    ui.open_chat(page, served.url, served.admin_token or "")
    ui.choose_model(page, "broken")
    # The reason is InvalidConfig, or CrashLoopBackOff once its worker failed thrice.
    status = page.locator("#model-status")
    expect(status).to_have_text(
        re.compile(r"^Failed: \w+ \(.*UPLION_WEB_TEST_UNSET_KEY is not set"))
    ui.send(page, "hello?")
    error = page.locator(".message.assistant .error").last
    expect(error).to_have_text(re.compile(
        r"^This model is unavailable: The model `broken` has failed \(\w+\): .*"
        r"UPLION_WEB_TEST_UNSET_KEY is not set"))
    ui.shoot(page, screenshots, "chat-model-failed")


def test_a_member_only_sees_the_models_it_may_use_and_not_the_admin_page(
    served: helpers.Served, browser: Browser, page: Page
) -> None:
    user = httpx.post(served.url + "/admin/users", headers=served.headers, json={
        "name": "erin", "allowed_models": ["echo"],
    }).json()
    token = httpx.post(served.url + "/admin/tokens", headers=served.headers,
                       json={"user_id": user["id"]}).json()["token"]
    ui.open_chat(page, served.url, token)
    expect(page.locator("#model option")).to_have_text(["echo (Running)"])
    page.get_by_role("link", name="Admin").click()
    expect(page.locator("#sign-in-error")).to_contain_text(
        "Not allowed: This endpoint needs an admin API key.")


def test_only_text_models_are_offered_for_chat(
    served: helpers.Served, page: Page
) -> None:
    listed = httpx.get(served.url + "/v1/models", headers=served.headers).json()["data"]
    assert {"echo-embed": "embedding"}.items() <= {m["id"]: m["serves"] for m in listed}.items()
    ui.open_chat(page, served.url, served.admin_token)
    options = page.locator("#model option")
    expect(options.first).to_contain_text("echo")
    offered = [text.split(" ")[0] for text in options.all_inner_texts()]
    assert "echo-embed" not in offered
    assert {"echo", "echo-slow", "broken"} <= set(offered)


def test_the_chat_works_from_the_keyboard_alone(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    page.goto(served.url + "/ui/chat")
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(served.admin_token or "")
    page.keyboard.press("Enter")
    expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    for _ in range(5):  # from the message box back to the model picker
        page.keyboard.press("Shift+Tab")
        if page.evaluate("document.activeElement.id") == "model":
            break
    expect(page.get_by_label("Model")).to_be_focused()
    page.get_by_label("Model").select_option("echo-slow")
    page.get_by_role("textbox", name="Message").focus()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")  # a new line, not sent
    page.keyboard.type(LONG_TEXT)
    page.keyboard.press("Enter")
    expect(page.locator('.message.assistant[aria-busy="true"] .body')).to_contain_text("word1")
    page.keyboard.press("Escape")  # stops the answer
    expect(page.locator(".message.assistant .meta").last).to_contain_text("stopped")
    expect(page.locator(".message.user").last).to_contain_text("first line\nword0")
