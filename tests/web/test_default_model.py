"""The chat page on the embedded defaults of ``make run``: SmolLM2 answers, streamed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests import helpers
from tests.web import ui
from tests.web.conftest import PHONE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    tmp = tmp_path_factory.mktemp("web-defaults")
    with helpers.platform(tmp, models=helpers.DEFAULT_MODELS, timeout=180,
                          env={"UPLION_CACHE_DIR": str(tmp / "cache")}) as served:
        yield served


def test_smollm2_streams_an_answer_in_the_chat_page(
    defaults: helpers.Served, page: Page, screenshots: Path
) -> None:
    ui.open_chat(page, defaults.url, defaults.admin_token or "")
    expect(page.locator("#model option")).to_have_text(
        ["smollm2-135m-instruct (Running)"], timeout=60_000)  # the embedding model answers no chat
    ui.choose_model(page, "smollm2-135m-instruct")
    page.locator("summary", has_text="Options").click()
    page.get_by_label("Max tokens").fill("40")
    page.get_by_label("Temperature").fill("0")
    page.evaluate(ui.WATCH_STREAM)
    ui.send(page, "What is the capital of France?")
    meta = page.locator(".message.assistant .meta").last
    expect(meta).to_contain_text("completion =", timeout=90_000)
    assert "Paris" in ui.last_answer(page)
    lengths = page.evaluate("window.streamedLengths")
    assert len(set(lengths)) >= 3, lengths  # token by token, not all at once
    ui.shoot(page, screenshots, "chat-smollm2")
    page.set_viewport_size(PHONE)
    ui.shoot(page, screenshots, "chat-smollm2-phone")
