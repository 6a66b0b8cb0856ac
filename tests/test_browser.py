"""A real browser on `clipsearch serve`: Debian's chromium, headless, driven by Playwright.

Playwright cannot download browsers here, so it drives the system's chromium;
where that is missing (or Playwright is), the test is skipped with a message.
Set CLIPSEARCH_SCREENSHOT=path.png to keep the screenshot (docs/serve.png is made so).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

from clipsearch import server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                "CI's .ci/run tries to); the browser test needs it")


@pytest.fixture
def running_server(store, encoder):
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = server.create_app(store.path, lambda: encoder)
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(10)


def test_search_in_a_real_browser(running_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(f"{running_server}/?q=a red circle")
            assert page.locator("input[name=q]").input_value() == "a red circle"
            cards = page.locator("#results .card")
            assert cards.count() == server.PAGE_SIZE
            assert cards.first.locator(".name").inner_text().endswith("-red-circle.jpg")
            page.wait_for_function("Array.from(document.images).slice(0, 12).every(i => i.complete)")
            widths = page.eval_on_selector_all("#results .card img",
                                               "imgs => imgs.slice(0, 12).map(i => i.naturalWidth)")
            assert widths and all(w == 320 for w in widths), "thumbnails are decoded images"
            screenshot = tmp_path / "serve.png"
            page.screenshot(path=str(screenshot))
            assert screenshot.stat().st_size > 10_000
            if os.environ.get("CLIPSEARCH_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["CLIPSEARCH_SCREENSHOT"])

            page.mouse.wheel(0, 20_000)  # infinite scroll brings the next page
            page.wait_for_function(f"document.querySelectorAll('#results .card').length > {server.PAGE_SIZE}")

            first_name = cards.first.locator(".name").inner_text()
            cards.first.locator("a").click()
            page.wait_for_url("**/photo?path=*")
            assert page.locator("h1").inner_text() == first_name
            assert page.locator("img.large").evaluate("i => i.complete && i.naturalWidth > 0")
            similar = page.locator("#similar .card")
            assert similar.count() == server.SIMILAR_ON_PHOTO_PAGE
            page.locator("a.all").click()
            page.wait_for_url("**/?like=*")
            assert page.locator("#results .card").count() == server.PAGE_SIZE
            shown_first = page.locator("#results .card .name").first.inner_text()
            assert shown_first != first_name, "the photo itself is not listed"
        finally:
            browser.close()
