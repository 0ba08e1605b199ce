"""The ``/ui`` mount: pages, static files, security headers; the Markdown renderer's safety."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page

from tests import helpers
from tests.web import ui


def test_pages_are_served_with_a_strict_content_security_policy(served: helpers.Served) -> None:
    for path in ("/ui/chat", "/ui/admin"):
        response = httpx.get(served.url + path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        # Scripts only from files: no inline script, no inline handler.
        scripts = re.findall(r"<script[^>]*>", response.text)
        assert scripts
        assert all("src=" in tag for tag in scripts)
        assert not re.search(r"\son[a-z]+=", response.text)


def test_ui_root_leads_to_the_chat_and_unknown_paths_are_json_404s(
    served: helpers.Served,
) -> None:
    for path in ("/ui", "/ui/"):
        answer = httpx.get(served.url + path, follow_redirects=True)
        assert answer.status_code == 200
        assert str(answer.url).endswith("/ui/chat")
    missing = httpx.get(served.url + "/ui/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "unknown_url"


def test_uplion_run_says_where_the_pages_are(served: helpers.Served) -> None:
    banner = served.log.read_text()
    assert f"Web:         {served.url}/ui/chat" in banner
    assert f"{served.url}/ui/admin" in banner
    assert httpx.get(served.url + "/ui/admin").status_code == 200


def test_static_files_are_served_from_the_package(served: helpers.Served) -> None:
    script = httpx.get(served.url + "/ui/static/js/chat.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.headers["content-security-policy"]
    again = httpx.get(served.url + "/ui/static/js/chat.js",
                      headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304
    style = httpx.get(served.url + "/ui/static/app.css")
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")


MARKDOWN = """# Title
Some **bold**, *italic*, `x < y` and [a link](https://example.com/a?b=1).

- one
- two with `code`

3. third
4. fourth

> quoted *text*

```python
print("<b>not bold</b>")
```

<img src=x onerror="window.hacked=1"> <script>window.hacked=2</script>
[bad](javascript:window.hacked=3) [data](data:text/html,hi) snake_case_name stays"""

RENDER = """async (source) => {
  const { render } = await import('./static/js/markdown.js');
  const box = document.createElement('div');
  box.className = 'message assistant';
  const body = document.createElement('div');
  body.className = 'body';
  body.append(render(source));
  box.append(body);
  document.body.append(box);
  const all = (selector) => [...box.querySelectorAll(selector)];
  return {
    heading: all('h3').map((e) => e.textContent),
    strong: all('strong').map((e) => e.textContent),
    em: all('em').map((e) => e.textContent),
    code: all('p code, li code').map((e) => e.textContent),
    links: all('a').map((e) => e.getAttribute('href')),
    bullets: all('ul > li').map((e) => e.textContent),
    numbered: all('ol > li').map((e) => e.textContent),
    start: box.querySelector('ol')?.getAttribute('start'),
    quote: box.querySelector('blockquote')?.textContent,
    block: box.querySelector('pre code')?.textContent,
    language: box.querySelector('.code-bar span')?.textContent,
    injected: all('img, script, [onerror]').length,
    text: box.textContent,
    hacked: window.hacked ?? null,
  };
}"""


def test_markdown_renders_answers_and_never_runs_their_markup(
    served: helpers.Served, page: Page, screenshots: Path
) -> None:
    page.goto(served.url + "/ui/chat")
    rendered: dict[str, Any] = page.evaluate(RENDER, MARKDOWN)
    assert rendered["heading"] == ["Title"]
    assert rendered["strong"] == ["bold"]
    assert rendered["em"] == ["italic", "text"]
    assert rendered["code"] == ["x < y", "code"]
    assert rendered["links"] == ["https://example.com/a?b=1"]
    assert rendered["bullets"] == ["one", "two with code"]
    assert rendered["numbered"] == ["third", "fourth"]
    assert rendered["start"] == "3"
    assert rendered["quote"] == "quoted text"
    assert rendered["block"] == 'print("<b>not bold</b>")'
    assert rendered["language"] == "python"
    # Markup and unsafe links are shown as text, never made into elements or run.
    assert rendered["injected"] == 0
    assert rendered["hacked"] is None
    assert '<img src=x onerror="window.hacked=1">' in rendered["text"]
    assert "bad" in rendered["text"]
    assert "snake_case_name" in rendered["text"]
    ui.shoot(page, screenshots, "markdown")


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((e) => e.type !== 'hidden')
  .filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
  .map((e) => e.outerHTML)"""


def test_every_control_of_both_pages_has_a_name(served: helpers.Served, page: Page) -> None:
    ui.sign_in(page, served.url, served.admin_token or "")
    page.locator("#sign-out").wait_for()
    assert page.evaluate(UNLABELLED) == []
    page.goto(served.url + "/ui/admin")  # signed in already: the token is kept in the tab
    page.locator("#models-table tbody tr").first.wait_for()
    assert page.evaluate(UNLABELLED) == []
