"""Driving the pages the way a person does: sign in, pick a model, send, wait for answers."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

# Record, in the page, every length the streaming answer's text had while it was still
# streaming (aria-busy): several lengths prove the answer arrived piece by piece.
WATCH_STREAM = """() => {
  window.streamedLengths = [];
  new MutationObserver(() => {
    const busy = document.querySelector('.message.assistant[aria-busy="true"] .body');
    if (busy && busy.innerText.trim()) window.streamedLengths.push(busy.innerText.length);
  }).observe(document.querySelector('#messages'), {subtree: true, childList: true,
                                                   characterData: true});
}"""


def sign_in(page: Page, url: str, token: str, path: str = "/ui/chat") -> None:
    page.goto(url + path)
    page.locator("#token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def open_chat(page: Page, url: str, token: str) -> None:
    sign_in(page, url, token)
    expect(page.locator("#prompt")).to_be_visible()


def choose_model(page: Page, model: str) -> None:
    page.get_by_label("Model").select_option(model)


def send(page: Page, text: str) -> None:
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("textbox", name="Message").press("Enter")


def last_answer(page: Page) -> str:
    return page.locator(".message.assistant .body").last.inner_text()


def shoot(page: Page, folder: Path, name: str) -> Path:
    """A full-page screenshot, ``<name>.png`` in the run's screenshot folder."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
