"""/v1/people: list, group, name, merge, move, over an index holding labelled and unlabelled photos."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image
from servers import ThreadServer


@pytest.fixture
def family(photos, tmp_path):
    """Unlabelled: the astronaut twice (mirrored, smaller), the cameraman mirrored, both side by side."""
    root = tmp_path / "family"
    (root / "x").mkdir(parents=True)
    shutil.copy(photos / "astronaut_flip.jpg", root / "x" / "1.jpg")
    with Image.open(photos / "astronaut.jpg") as im:
        im.resize((400, 400), Image.Resampling.LANCZOS).save(root / "2.png")
    with Image.open(photos / "camera.png") as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "3.png")
    shutil.copy(photos / "group.jpg", root / "group.jpg")
    return root


@pytest.fixture
def server(config, embedder, index_dir, family):
    from facesearch.index import build_index

    build_index(family, index_dir, embedder, labeled=False)
    with ThreadServer(config, embedder) as s:
        yield s


def test_people_endpoints(server, photos, family):
    c = server.client
    before = c.get("/v1/people")
    assert before.status_code == 200, before.text
    assert before.json()["pending"] == 5 and before.json()["people"] == []
    grouped = c.post("/v1/people/group", json={}).json()
    assert grouped["pending"] == 0 and grouped["grouped"] == 5
    people = grouped["people"]
    assert [len(p["faces"]) for p in people] == [3, 2]
    astronaut, cameraman = people
    # Each looks like the labelled identity of the same person: offered with a score, not merged.
    assert astronaut["suggestion"]["identity"] == "eileen" and cameraman["suggestion"]["identity"] == "cameraman"
    assert all(p["name"] is None for p in people)
    face = astronaut["faces"][0]
    thumb = c.get(f"/v1/faces/{face['id']}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"

    generation = c.get("/v1/stats").json()["generation"]
    for method, url, body, status, text in [
        ("post", "/v1/people/person-0042/name", {"name": "x"}, 404, "no person 'person-0042'"),
        ("post", f"/v1/people/{astronaut['person']}/name", {"name": ""}, 422, "not allowed"),
        ("post", f"/v1/people/{astronaut['person']}/merge", {"other": astronaut["person"]}, 422, "with itself"),
        ("post", "/v1/people/faces/99999/move", {"to": None}, 404, "no face 99999"),
        ("post", f"/v1/people/{astronaut['person']}/merge", {"other": cameraman["person"]}, 422, "two faces of one photo"),
    ]:
        r = getattr(c, method)(url, json=body)
        assert r.status_code == status and text in r.json()["detail"], r.text
    assert c.get("/v1/stats").json()["generation"] == generation

    named = c.post(f"/v1/people/{astronaut['person']}/name", json={"name": "Eileen Collins"})
    assert named.status_code == 200 and named.json()["faces"] == 3, named.text
    answer = c.post("/v1/query", files={"photo": ("a.jpg", (photos / "astronaut_flip.jpg").read_bytes(), "image/jpeg")})
    assert answer.json()["faces"][0]["identity"] == "Eileen Collins"
    detail = c.get("/v1/identities/Eileen Collins").json()  # a named person is an identity like any other
    assert detail["faces"] == 3 and {p["source"] for p in detail["photos"]} == {"unlabeled"}
    assert sorted(f["id"] for p in detail["photos"] for f in p["faces"]) == sorted(f["id"] for f in astronaut["faces"])
    # Named after the labelled identity: the cameraman's faces join it.
    joined = c.post(f"/v1/people/{cameraman['person']}/name", json={"name": "cameraman"}).json()
    assert joined["name"] == "cameraman"
    lone = next(f for f in cameraman["faces"] if f["path"].endswith("3.png"))
    moved = c.post(f"/v1/people/faces/{lone['id']}/move", json={"to": None}).json()
    assert moved["person"] is None and moved["joined"] == cameraman["person"]
    listed = c.get("/v1/people").json()
    assert [f["id"] for f in listed["unclustered"]] == [lone["id"]]
    assert [(p["name"], len(p["faces"])) for p in listed["people"]] == [("Eileen Collins", 3), ("cameraman", 1)]
