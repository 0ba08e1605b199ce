"""Browser tests: a real platform (``uplion run``) and Debian's Chromium driven by Playwright.

Playwright's own browser download does not work here: the tests launch ``/usr/bin/chromium``
(installed by ``make test``), headless, with a fresh profile each launch. Screenshots of every
page go to ``<pytest's base temp>/screenshots``, to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from tests import helpers

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
MODELS = Path(__file__).parent / "models.yaml"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    """One platform on the echo test models (and a model that fails) for the fast tests."""
    with helpers.platform(tmp_path_factory.mktemp("web"), MODELS) as platform:
        yield platform


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is not installed: run `make test`, which installs chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


class PageProblems:
    """What went wrong inside a page: uncaught errors and blocked content (CSP violations)."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def console(self, message: ConsoleMessage) -> None:
        # A refused API call is logged as "Failed to load resource": the pages expect those.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.found.append(message.text)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    fresh = browser.new_context(viewport=DESKTOP)
    fresh.grant_permissions(["clipboard-read", "clipboard-write"])
    yield fresh
    fresh.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A page in a fresh context (its own storage) that fails the test on any page error."""
    problems = PageProblems()
    opened = context.new_page()
    opened.on("console", problems.console)
    opened.on("pageerror", lambda error: problems.found.append(str(error)))
    opened.set_default_timeout(20_000)
    yield opened
    assert problems.found == []
