"""The web page in a real headless browser: Debian's Chromium, driven by Playwright (no browser download).

Every request the page makes is checked to stay on the server: anything else fails the test.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the page test drives Chromium with Playwright: "
                                                            "pip install -e '.[dev]'")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; "
                                                          ".ci/run installs it)")
# The machine has no network: nothing in the background may try to reach one. As root, no sandbox.
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-default-apps", "--disable-extensions"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(server, browser):
    elsewhere: list[str] = []
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    here = urlparse(server.url).netloc

    def only_here(route):
        if urlparse(route.request.url).netloc == here or route.request.url.startswith(("blob:", "data:")):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_here)
    yield page
    context.close()
    assert not elsewhere, f"the page fetched from elsewhere: {elsewhere}"


def test_upload_see_boxes_and_names_then_enrol(server, browser_page, photos, tmp_path):
    page = browser_page
    page.goto(server.url + "/")
    sync_api.expect(page.locator("#stats")).to_contain_text("2 faces of 2 identities")

    page.set_input_files("#file", str(photos / "astronaut.jpg"))
    box = page.locator("#boxes .box")
    sync_api.expect(box).to_have_count(1)
    sync_api.expect(box.locator(".label")).to_have_text("eileen")
    assert "known" in box.get_attribute("class")
    face = page.locator("#faces .face")
    sync_api.expect(face.locator(".verdict")).to_have_text("eileen")
    sync_api.expect(face.locator(".matches li")).to_have_count(2)  # eileen and cameraman, each with a thumbnail
    page.wait_for_function("[...document.querySelectorAll('.matches img')].every(i => i.complete && i.naturalWidth)")

    # A group photo: two boxes; the cameraman is removed, so his face is unknown until enrolled here.
    assert server.client.delete("/v1/identities/cameraman").status_code == 200
    page.set_input_files("#file", str(photos / "group.jpg"))
    sync_api.expect(page.locator("#boxes .box")).to_have_count(2)
    unknown = page.locator("#faces .face", has=page.locator(".verdict", has_text="unknown"))
    sync_api.expect(unknown).to_have_count(1)
    unknown.locator("input[name=identity]").fill("the cameraman")
    unknown.locator("button[type=submit]").click()
    sync_api.expect(page.locator("#notice")).to_contain_text("enrolled as the cameraman (face id ")
    labels = page.locator("#boxes .box .label")
    sync_api.expect(labels).to_have_count(2)
    sync_api.expect(page.locator("#boxes .box.known")).to_have_count(2)
    assert sorted(labels.all_inner_texts()) == ["eileen", "the cameraman"]
    sync_api.expect(page.locator("#stats")).to_contain_text("2 faces of 2 identities")

    shot = Path(tmp_path) / "facesearch-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_a_photo_without_a_face_shows_the_servers_message(server, browser_page, photos):
    page = browser_page
    page.goto(server.url + "/")
    page.set_input_files("#file", str(photos / "no_face.png"))
    sync_api.expect(page.locator("#error")).to_contain_text("no face found in photo 'no_face.png'")
    sync_api.expect(page.locator("#boxes .box")).to_have_count(0)


def test_the_api_docs_render_offline(server, browser_page):
    page = browser_page
    page.goto(server.url + "/docs")
    sync_api.expect(page.locator(".swagger-ui .information-container")).to_contain_text("facesearch")
    sync_api.expect(page.locator(".opblock-summary-path").first).to_be_visible()
