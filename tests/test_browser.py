"""A real browser on `clipsearch serve`: Debian's chromium, headless, driven by Playwright.

Playwright cannot download browsers here, so it drives the system's chromium;
where that is missing (or Playwright is), the test is skipped with a message.
Set CLIPSEARCH_SCREENSHOT=path.png to keep the screenshot (docs/serve.png is made so), and
CLIPSEARCH_SCREENSHOTS=folder for the search, photo and dedupe pages at 390 and 1280 px (docs/screenshots).
The pages must fit a 360 px phone: no sideways scrolling, the Search button on screen, nothing cut mid-word.
The app's Content-Security-Policy forbids evaluating strings, so waits poll `page.evaluate` (see `_wait`).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

from clipsearch.web import app as server

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


def _wait(page, predicate: str, timeout: float = 20) -> None:
    """Wait until the JavaScript function `predicate` returns true (page.wait_for_function evaluates a string,
    which the app's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.05)


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
            _wait(page, "() => Array.from(document.images).slice(0, 12).every(i => i.complete)")
            widths = page.eval_on_selector_all("#results .card img",
                                               "imgs => imgs.slice(0, 12).map(i => i.naturalWidth)")
            assert widths and all(w == 320 for w in widths), "thumbnails are decoded images"
            screenshot = tmp_path / "serve.png"
            page.screenshot(path=str(screenshot))
            assert screenshot.stat().st_size > 10_000
            if os.environ.get("CLIPSEARCH_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["CLIPSEARCH_SCREENSHOT"])

            page.mouse.wheel(0, 20_000)  # infinite scroll brings the next page
            _wait(page, f"() => document.querySelectorAll('#results .card').length > {server.PAGE_SIZE}")

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


@pytest.fixture(scope="module")
def camera_library(tmp_path_factory, encoder):
    """A library with duplicates, camera EXIF and long folder names, indexed; (library, index path)."""
    from clipsearch.indexing.job import IndexOptions, index_folders
    from clipsearch.store import Store
    from clipsearch_dev import scenes

    library = tmp_path_factory.mktemp("browser") / "Family photos 2024" / "Summer holiday in Brittany"
    scenes.write_duplicate_library(library, families=3, unrelated=40, raw_pairs=2, seed=5, size=(320, 240))
    db = library.parent.parent / "index.db"
    with Store.open(db) as store:
        index_folders([library], store, encoder=encoder, options=IndexOptions(batch_size=16))
    return library, db


@pytest.fixture
def camera_server(camera_library, encoder):
    yield from _serve(camera_library[1], encoder)


def _serve(db, encoder):
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = server.create_app(db, lambda: encoder)
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uvicorn_server.should_exit = True
    thread.join(10)


FITS = """() => {
  const inside = (el) => { const r = el.getBoundingClientRect(); return r.left >= 0 && r.right <= innerWidth + 0.5; };
  const overlaps = (a, b) => { const r = a.getBoundingClientRect(), s = b.getBoundingClientRect();
                               return r.right > s.left && s.right > r.left && r.bottom > s.top && s.bottom > r.top; };
  const button = document.querySelector("form.search button");
  const bbox = button.getBoundingClientRect();
  return {
    overflow: document.documentElement.scrollWidth - innerWidth,
    button: bbox.width > 0 && bbox.height > 0 && inside(button),
    wrappedMeta: [...document.querySelectorAll(".card .meta > span")].filter((m) =>
        m.getClientRects().length > 1).length,
    scoreOnName: [...document.querySelectorAll("figcaption")].filter((f) =>
        f.querySelector(".score") && overlaps(f.querySelector(".score"), f.querySelector(".name"))).length,
    outside: [...document.querySelectorAll("input, button, .card, fieldset")].filter((e) =>
        e.getBoundingClientRect().width > 0 && !inside(e)).length,
  };
}"""


def _check_fits(page, where: str) -> None:
    found = page.evaluate(FITS)
    assert found["overflow"] <= 0, f"{where}: the page is {found['overflow']} px wider than the screen"
    assert found["button"], f"{where}: the Search button is not on screen"
    assert found["wrappedMeta"] == 0, f"{where}: a card's date or size wraps inside itself ('KB' alone on a line)"
    assert found["scoreOnName"] == 0, f"{where}: a score runs into the file name"
    assert found["outside"] == 0, f"{where}: {found['outside']} inputs, buttons or cards stick out of the screen"


def _keep(page, name: str) -> None:
    """Save a screenshot under $CLIPSEARCH_SCREENSHOTS (the README's docs/screenshots are made so), small."""
    folder = os.environ.get("CLIPSEARCH_SCREENSHOTS")
    if not folder:
        return
    from PIL import Image

    _wait(page, "() => Array.from(document.images).filter(i => i.getBoundingClientRect().top < innerHeight)"
                ".every(i => i.complete)")
    path = os.path.join(folder, name)
    page.screenshot(path=path)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def test_pages_fit_a_phone_and_a_wide_screen(camera_server, camera_library):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    library, _ = camera_library
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_FLAGS)
        try:
            for width, height in ((360, 740), (390, 844), (1280, 900)):
                page = browser.new_page(viewport={"width": width, "height": height})
                size = f"{width}x{height}"
                page.goto(f"{camera_server}/?q=a red circle")
                assert page.locator("#results .card").count() > 10
                _wait(page, "() => Array.from(document.images).slice(0, 6).every(i => i.complete)")
                _check_fits(page, f"search at {size}")
                assert page.locator("form.search button").is_visible()
                if width != 360:
                    _keep(page, f"search-{width}.png")

                page.goto(f"{camera_server}/?q=a circle&after=2030")
                assert "Nothing found." in page.inner_text("main")
                assert page.locator("details.filters-box").get_attribute("open") is not None, "filters on: shown"
                _check_fits(page, f"filters at {size}")

                original = sorted((library / "originals").iterdir())[0]
                page.goto(f"{camera_server}/photo?path={original}")
                _wait(page, "() => document.querySelector('img.large').complete")
                assert page.locator("dd.camera").inner_text() == "clipsearch Scene Camera"
                assert page.locator("dd.taken").inner_text().startswith("20")
                _check_fits(page, f"photo at {size}")
                if width != 360:
                    _keep(page, f"photo-{width}.png")

                page.goto(f"{camera_server}/dedupe")
                assert page.locator("fieldset.group").count() >= 3
                _wait(page, "() => Array.from(document.images).slice(0, 6).every(i => i.complete)")
                _check_fits(page, f"dedupe at {size}")
                assert page.locator(".root .path").evaluate("n => n.innerHTML.includes('<wbr>')"), \
                    "folders wrap at slashes"
                assert page.locator(".member .folder").first.inner_text() == "in originals", "below the common folder"
                shown = page.locator(".member .name").all_inner_texts()
                assert shown and all("/" not in name and "." in name for name in shown), "whole file names"
                destination = page.locator("input[name=destination]")
                assert destination.bounding_box()["width"] >= min(width - 60, 300), "the review folder box is usable"
                if width != 360:
                    _keep(page, f"dedupe-{width}.png")
                page.close()
        finally:
            browser.close()


def test_an_image_chosen_in_the_browser_is_uploaded_and_searched(camera_server, camera_library, tmp_path):
    # The upload form carries the token and the browser sends Origin: the Origin check and the strict
    # Content-Security-Policy let our own page work.
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    library, _ = camera_library
    picture = sorted((library / "originals").iterdir())[0]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            refused: list[str] = []
            page.on("console", lambda message: refused.append(message.text)
                    if "Content Security Policy" in message.text else None)
            page.goto(camera_server)
            page.set_input_files("form.upload input[type=file]", str(picture))
            page.wait_for_url("**/?upload=*")
            assert "Photos like your image" in page.inner_text("main")
            assert page.locator("#results .card").count() > 10
            first = page.locator("#results .card .name").first.inner_text()
            assert first.split("-")[0] == picture.name.split("-")[0], "its own copies come first"
            assert page.locator("img[alt='the uploaded image']").evaluate("i => i.complete && i.naturalWidth > 0")
            _check_fits(page, "upload results at 390")
            assert refused == []
        finally:
            browser.close()
