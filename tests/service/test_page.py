"""The web page in a real headless browser: Debian's Chromium, driven by Playwright (no browser download).

Every request the page makes is checked to stay on the server: anything else fails the test.
"""

from __future__ import annotations

import shutil
import time
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


def images_loaded(page, selector: str, timeout: float = 15.0) -> None:
    """Wait until every image under `selector` has loaded. Polled from here: Playwright's
    wait_for_function re-evaluates a string predicate with eval, which the page's CSP refuses
    (it passed only when the images were there at the first look)."""
    script = f"() => [...document.querySelectorAll({selector!r})].every(i => i.complete && i.naturalWidth > 0)"
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"the images of {selector} did not load within {timeout} s"
        page.wait_for_timeout(50)


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
    sync_api.expect(box.locator(".label .name")).to_have_text("eileen")
    sync_api.expect(box.locator(".label .number")).to_have_text("1")
    assert "known" in box.get_attribute("class")
    face = page.locator("#faces .face")
    sync_api.expect(face.locator(".verdict")).to_have_text("eileen")
    sync_api.expect(face.locator(".matches li")).to_have_count(2)  # eileen and cameraman, each with a thumbnail
    images_loaded(page, ".matches img")

    # A group photo: two boxes; the cameraman is removed, so his face is unknown until enrolled here.
    assert server.client.delete("/v1/identities/cameraman").status_code == 200
    page.set_input_files("#file", str(photos / "group.jpg"))
    sync_api.expect(page.locator("#boxes .box")).to_have_count(2)
    unknown = page.locator("#faces .face", has=page.locator(".verdict", has_text="unknown"))
    sync_api.expect(unknown).to_have_count(1)
    unknown.locator("input[name=identity]").fill("the cameraman")
    unknown.locator("button[type=submit]").click()
    sync_api.expect(page.locator("#notice")).to_contain_text("enrolled as the cameraman (face id ")
    labels = page.locator("#boxes .box .label .name")
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


def test_search_page_numbers_boxes_as_the_list_and_long_names_stay_apart(server, browser_page, photos):
    long_names = ["Eileen_Marie_Collins_of_Elmira_New_York", "The_Cameraman_Behind_The_Old_Camera"]
    c = server.client
    for name, photo in zip(long_names, ("astronaut_flip.jpg", "camera.png")):
        r = c.post(f"/v1/identities/{name}/faces", files={"photos": (photo, (photos / photo).read_bytes(), "image/jpeg")})
        assert r.status_code == 201, r.text
    page = browser_page
    page.goto(server.url + "/")
    page.set_input_files("#file", str(photos / "group.jpg"))
    sync_api.expect(page.locator("#boxes .box")).to_have_count(2)
    sync_api.expect(page.locator("#faces .face")).to_have_count(2)
    # Box N carries number N and the verdict of the list's face N.
    for box in page.locator("#boxes .box").all():
        n = int(box.locator(".number").inner_text())
        item = page.locator("#faces .face").nth(n - 1)
        assert item.locator(".face-number").inner_text() == f"Face {n}:"
        assert box.locator(".name").inner_text() == item.locator(".verdict").inner_text()
    # Under each face, the names of its matches (four, two of them long) keep within their own thumbnails' width.
    sync_api.expect(page.locator("#faces .face").first.locator(".matches li")).to_have_count(4)
    overlaps = page.evaluate("""() => [...document.querySelectorAll('.matches')].map(list => {
        const rects = [...list.querySelectorAll('.name')].map(n => {  // the text itself, not its box
            const range = document.createRange();
            range.selectNodeContents(n);
            return range.getBoundingClientRect();
        });
        const items = [...list.querySelectorAll('li')].map(li => li.getBoundingClientRect());
        const spill = rects.some((r, i) => r.left < items[i].left - 0.5 || r.right > items[i].right + 0.5);
        const meet = rects.some((a, i) => rects.some((b, j) => i < j && a.left < b.right && b.left < a.right
                                                           && a.top < b.bottom && b.top < a.bottom));
        return spill || meet;
    })""")
    assert overlaps == [False, False]


def test_people_page_group_name_merge_and_click_a_face_out(server, browser_page, photos, embedder, tmp_path):
    from facesearch.index import build_index

    family = tmp_path / "family"
    (family / "x").mkdir(parents=True)
    shutil.copy(photos / "astronaut_flip.jpg", family / "x" / "1.jpg")
    shutil.copy(photos / "astronaut.jpg", family / "2.jpg")
    shutil.copy(photos / "camera.png", family / "3.png")
    shutil.copy(photos / "group.jpg", family / "group.jpg")
    build_index(family, server.config.index_dir, embedder, labeled=False, wait=10)
    server.service.snapshots.refresh(force=True)

    page = browser_page
    page.goto(server.url + "/people")
    group = page.locator("#group")
    sync_api.expect(group).to_have_text("Group 5 new faces")
    group.click()
    people = page.locator("#people .person")
    sync_api.expect(people).to_have_count(2)
    first, second = people.nth(0), people.nth(1)
    sync_api.expect(first.locator(".person-faces li")).to_have_count(3)  # largest first
    sync_api.expect(second.locator(".person-faces li")).to_have_count(2)
    sync_api.expect(first.locator(".suggestion")).to_contain_text("looks like eileen (score 0.")
    sync_api.expect(second.locator(".suggestion")).to_contain_text("looks like cameraman (score 0.")
    images_loaded(page, ".person-faces img")

    # The two share the group photo: merging them is refused, with the server's reason, and nothing changes.
    first.locator(".merge-form button").click()
    sync_api.expect(page.locator("#error")).to_contain_text("two faces of one photo")
    sync_api.expect(people).to_have_count(2)

    first.locator("input[name=name]").fill("Eileen Collins")
    first.locator(".name-form button").click()
    sync_api.expect(page.locator("#notice")).to_contain_text("is now Eileen Collins (3 faces)")
    sync_api.expect(page.locator("#people .person").first.locator(".person-name")).to_have_text("Eileen Collins")
    answer = server.client.post("/v1/query", files={"photo": ("a.jpg", (photos / "astronaut.jpg").read_bytes(),
                                                              "image/jpeg")}).json()
    # The labelled eileen holds this very photo; the named person is the other identity found for her.
    assert [m["identity"] for m in answer["faces"][0]["matches"]][:2] in (["eileen", "Eileen Collins"],
                                                                          ["Eileen Collins", "eileen"])

    cameraman = page.locator("#people .person").nth(1)
    cameraman.locator(".person-faces li").first.locator("button.out").click()
    sync_api.expect(page.locator("#notice")).to_contain_text("moved out of person-")
    sync_api.expect(page.locator("#alone .person-faces li")).to_have_count(1)
    sync_api.expect(page.locator("#people .person").nth(1).locator(".person-faces li")).to_have_count(1)
    # Dragged back onto the cameraman's row, the face joins him again.
    page.locator("#alone .person-faces li").first.drag_to(page.locator("#people .person").nth(1))
    sync_api.expect(page.locator("#notice")).to_contain_text("moved into person-")
    sync_api.expect(page.locator("#alone")).to_be_hidden()
    sync_api.expect(page.locator("#people .person").nth(1).locator(".person-faces li")).to_have_count(2)
    images_loaded(page, ".person-faces img")
    shot = Path(tmp_path) / "facesearch-people.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
