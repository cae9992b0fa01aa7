"""Every endpoint of the service through a real uvicorn on 127.0.0.1 and httpx, with real faces.

The index starts as eileen (astronaut.jpg) and cameraman (camera.png), built from a folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from urllib.parse import quote

import pytest
from PIL import Image
from servers import ThreadServer

from facesearch.index import GalleryIndex
from facesearch.index.query import FaceSearcher


def upload(path, field: str = "photo", content_type: str = "image/jpeg") -> dict:
    return {field: (path.name, path.read_bytes(), content_type)}


def query(s, path, **params) -> dict:
    r = s.client.post("/v1/query", files=upload(path), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def verdicts(answer: dict) -> list[str]:
    return [f["verdict"] for f in answer["faces"]]


@pytest.fixture
def limited(config, embedder):
    """A server with small limits: 10 Mpx per photo, 1 MB per request."""
    with ThreadServer(dataclasses.replace(config, max_pixels=10_000_000, max_upload_bytes=1_000_000), embedder) as s:
        yield s


def test_health_and_stats(server):
    assert server.client.get("/v1/health").json() == {"status": "ok", "generation": 1, "detail": None}
    stats = server.client.get("/v1/stats").json()
    assert (stats["faces"], stats["photos"], stats["identities"]) == (2, 2, 2)
    assert stats["model"] == "dlib-resnet-v1" and stats["index_type"] == "auto" and stats["dim"] == 128
    assert stats["threshold"] == pytest.approx(0.9262) and stats["threshold_source"] == "model-card"
    assert stats["decision"]["rule"] == "score"
    assert stats["segments"] == [{"kind": "flat", "count": 2}] and stats["auth"] is False


def test_query_answers_what_the_cli_answers(server, photos, embedder, config):
    answer = query(server, photos / "astronaut_flip.jpg", k=2)
    with GalleryIndex.open(config.index_dir) as g:
        cli = FaceSearcher(g, embedder).answer_photo(photos / "astronaut_flip.jpg", k=2)
    assert answer["faces"] == json.loads(json.dumps(cli["faces"]))  # the CLI's --json content, face for face
    assert verdicts(answer) == ["eileen"] and answer["faces"][0]["matches"][1]["identity"] == "cameraman"
    assert {k: answer[k] for k in ("image", "model", "generation")} == {
        "image": "astronaut_flip.jpg", "model": "dlib-resnet-v1", "generation": 1}
    assert answer["threshold"] == pytest.approx(0.9262) and answer["threshold_source"] == cli["threshold_source"]

    both = query(server, photos / "group.jpg", k=1, threshold=0.5)
    assert sorted(verdicts(both)) == ["cameraman", "eileen"]
    assert both["threshold"] == 0.5 and both["threshold_source"] == "--threshold"
    assert all(len(f["matches"]) == 1 and f["box"] for f in both["faces"])


def test_fpir_needs_a_calibration_and_threshold_and_fpir_exclude_each_other(server, photos):
    r = server.client.post("/v1/query", files=upload(photos / "astronaut.jpg"), params={"fpir": 0.01})
    assert r.status_code == 422 and "needs a calibrated index" in r.json()["detail"]
    r = server.client.post("/v1/query", files=upload(photos / "astronaut.jpg"), params={"fpir": 0.01, "threshold": 0.9})
    assert r.status_code == 422 and r.json()["detail"] == "pass threshold or fpir, not both"


def test_verify(server, photos):
    def verify(a, b, **params):
        r = server.client.post("/v1/verify", files={"photo1": (a.name, a.read_bytes(), "image/jpeg"),
                                                    "photo2": (b.name, b.read_bytes(), "image/png")}, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    same = verify(photos / "astronaut.jpg", photos / "astronaut_flip.jpg")
    assert same["same"] and same["score"] > 0.95 and same["threshold"] == pytest.approx(0.9262)
    different = verify(photos / "astronaut.jpg", photos / "camera.png")
    assert not different["same"] and different["score"] < 0.9
    assert [p["faces_found"] for p in different["photos"]] == [1, 1]
    assert verify(photos / "astronaut.jpg", photos / "camera.png", threshold=0.5)["same"]


def test_enrol_query_remove_cycle(server, photos):
    c = server.client
    removed = c.delete("/v1/identities/eileen").json()
    assert removed == {"identity": "eileen", "faces_removed": 1, "photos_removed": 1,
                       "excluded": ["eileen/astronaut.jpg"], "generation": 2}
    assert verdicts(query(server, photos / "astronaut.jpg")) == ["unknown"]

    r = c.post("/v1/identities/Eileen Collins/faces", files=upload(photos / "astronaut_flip.jpg", "photos"))
    assert r.status_code == 201, r.text
    enrolled = r.json()
    (face,) = enrolled["faces"]
    assert enrolled["identity"] == "Eileen Collins" and enrolled["photos_kept"] and face["new"]
    assert face["photo"] == f".enrolled/Eileen Collins/{face['sha256']}.jpg" and face["faces_found"] == 1
    answer = query(server, photos / "astronaut.jpg")  # read-your-writes: the next query sees it
    assert verdicts(answer) == ["Eileen Collins"] and answer["faces"][0]["matches"][0]["id"] == face["id"]

    listing = c.get("/v1/identities").json()
    assert listing["identities"] == [{"identity": "Eileen Collins", "photos": 1, "faces": 1},
                                     {"identity": "cameraman", "photos": 1, "faces": 1}]
    assert listing["total"] == 2
    detail = c.get("/v1/identities/Eileen Collins").json()
    assert detail["faces"] == 1 and detail["photos"][0]["source"] == "api"
    assert detail["photos"][0]["faces"] == [{"id": face["id"], "face": 0, "box": face["box"]}]

    thumb = c.get(f"/v1/faces/{face['id']}/thumbnail", params={"size": 64})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 64

    gone = c.delete(f"/v1/faces/{face['id']}").json()
    assert (gone["faces_removed"], gone["photos_removed"], gone["excluded"]) == (1, 1, [])
    assert verdicts(query(server, photos / "astronaut.jpg")) == ["unknown"]
    assert c.get("/v1/identities/Eileen Collins").status_code == 404
    assert c.get(f"/v1/faces/{face['id']}/thumbnail").status_code == 404
    assert c.delete(f"/v1/faces/{face['id']}").status_code == 404
    assert c.delete("/v1/identities/eileen").status_code == 404
    assert not any((server.service.writes.photos.root).rglob("*.jpg"))  # the photo left the store


def test_an_emptied_index_answers_unknown(server, photos):
    for name in ("eileen", "cameraman"):
        assert server.client.delete(f"/v1/identities/{name}").status_code == 200
    answer = query(server, photos / "astronaut.jpg")
    assert verdicts(answer) == ["unknown"] and answer["faces"][0]["matches"] == []
    assert server.client.get("/v1/stats").json()["faces"] == 0


def test_enrol_several_photos_a_chosen_face_and_the_same_face_again(server, photos):
    c = server.client
    files = [("photos", ("a.jpg", (photos / "astronaut.jpg").read_bytes(), "image/jpeg")),
             ("photos", ("b.jpg", (photos / "astronaut_flip.jpg").read_bytes(), "image/jpeg"))]
    r = c.post("/v1/identities/collins/faces", files=files)
    assert r.status_code == 201 and [f["new"] for f in r.json()["faces"]] == [True, True]

    group = query(server, photos / "group.jpg")["faces"]
    cameraman = next(i for i, f in enumerate(group) if f["verdict"] == "cameraman")
    r = c.post("/v1/identities/camera man 2/faces", files=upload(photos / "group.jpg", "photos"),
               data={"face": str(cameraman)})
    assert r.status_code == 201, r.text
    (face,) = r.json()["faces"]
    assert face["face"] == cameraman and face["faces_found"] == 2 and face["box"] == group[cameraman]["box"]
    again = c.post("/v1/identities/camera man 2/faces", files=upload(photos / "group.jpg", "photos"),
                   data={"face": str(cameraman)}).json()
    assert again["faces"][0]["id"] == face["id"] and not again["faces"][0]["new"]
    assert again["generation"] == r.json()["generation"]  # nothing was written

    r = c.post("/v1/identities/x/faces", files=upload(photos / "group.jpg", "photos"), data={"face": "2"})
    assert r.status_code == 422 and "shows 2 face(s): face must be 0 to 1" in r.json()["detail"]
    r = c.post("/v1/identities/x/faces", files=files, data={"face": "0"})
    assert r.status_code == 422 and "'face' chooses a face of one photo" in r.json()["detail"]
    # One photo without a face refuses the whole request: nothing of it is enrolled.
    mixed = [files[0], ("photos", ("cup.png", (photos / "no_face.png").read_bytes(), "image/png"))]
    r = c.post("/v1/identities/half/faces", files=mixed)
    assert r.status_code == 422 and "no face found in photo 'cup.png'" in r.json()["detail"]
    assert c.get("/v1/identities/half").status_code == 404


def test_identities_are_paged(server, photos):
    for name in ("a1", "a2", "a3"):
        assert server.client.post(f"/v1/identities/{name}/faces",
                                  files=upload(photos / "astronaut.jpg", "photos")).status_code == 201
    page = server.client.get("/v1/identities", params={"offset": 1, "limit": 2}).json()
    assert [i["identity"] for i in page["identities"]] == ["a2", "a3"] and page["total"] == 5
    assert server.client.get("/v1/identities", params={"limit": 0}).status_code == 422


@pytest.mark.parametrize("name", ["..", "a..b", ".hidden", " padded", "x" * 129, "back\\slash", "tab\there"])
def test_identity_names_are_checked(server, photos, name):
    quoted = "/v1/identities/" + quote(name, safe="").replace(".", "%2E")  # so that no client normalises '..'
    for method, path in (("POST", quoted + "/faces"), ("GET", quoted), ("DELETE", quoted)):
        r = server.client.request(method, path, files=upload(photos / "astronaut.jpg", "photos")
                                  if method == "POST" else None)
        assert r.status_code == 422, (method, r.text)
        assert "printable characters, without '/', '\\' or '..'" in r.json()["detail"]
    assert server.client.get("/v1/identities/a%2Fb").status_code == 404  # a slash never reaches an identity


def test_bad_uploads_get_a_4xx_with_a_message_and_the_server_keeps_serving(limited, photos):
    server = limited
    jpeg = (photos / "astronaut.jpg").read_bytes()
    cases = {
        "empty": (("e.jpg", b"", "image/jpeg"), 422, "photo 'e.jpg': empty file"),
        "not an image": (("notes.jpg", b"hello, world\n" * 50, "image/jpeg"), 422, "not an image file"),
        "truncated": (("cut.jpg", jpeg[: len(jpeg) // 3], "image/jpeg"), 422, "corrupt or truncated image"),
        "wrong content type": (("a.jpg", jpeg, "text/plain"), 415, "content type 'text/plain' is not an image"),
        "too many pixels": (("big.png", (photos / "big.png").read_bytes(), "image/png"), 413,
                            "4000x3000 = 12,000,000 pixels; the limit is 10,000,000"),
        "no face": (("cup.png", (photos / "no_face.png").read_bytes(), "image/png"), 422, "no face found in photo"),
    }
    for what, (file, status, message) in cases.items():
        for path, field in (("/v1/query", "photo"), ("/v1/identities/x/faces", "photos")):
            r = server.client.post(path, files={field: file})
            assert r.status_code == status, (what, path, r.text)
            assert message in r.json()["detail"], (what, r.json())
    r = server.client.post("/v1/query", data={"photo": "not a file"})
    assert r.status_code == 422
    assert verdicts(query(server, photos / "astronaut.jpg")) == ["eileen"]
    assert server.client.get("/v1/identities/x").status_code == 404


def test_a_decompression_bomb_is_refused_without_decoding(limited):
    server = limited
    bomb = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(bomb, format="PNG")  # 900 Mpx (~110 MB as bytes) in a small file
    assert len(bomb.getvalue()) < 200_000
    r = server.client.post("/v1/query", files={"photo": ("bomb.png", bomb.getvalue(), "image/png")})
    assert r.status_code == 413 and "too many pixels" in r.json()["detail"]


def test_request_bodies_over_the_limit_get_413(limited, photos):
    server = limited
    big = b"\xff\xd8" + bytes(1_200_000)
    r = server.client.post("/v1/query", files={"photo": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "request body larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(120):
            yield bytes(10_000)
        yield b"\r\n--b--\r\n"

    r = server.client.post("/v1/query", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    assert verdicts(query(server, photos / "astronaut.jpg")) == ["eileen"]


def test_cors_is_off_by_default(server):
    r = server.client.options("/v1/stats", headers={"Origin": "http://evil.example",
                                                    "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    r = server.client.get("/v1/stats", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_openapi_docs_and_page_are_served_from_here(server):
    spec = server.client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/query", "/v1/verify", "/v1/identities/{identity}/faces", "/v1/identities",
                                  "/v1/identities/{identity}", "/v1/faces/{face_id}", "/v1/faces/{face_id}/thumbnail",
                                  "/v1/health", "/v1/stats", "/v1/people", "/v1/people/group", "/v1/people/{person}/name",
                                  "/v1/people/{person}/merge", "/v1/people/faces/{face_id}/move"}
    docs = server.client.get("/docs").text
    assert "/static-docs/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert server.client.get("/static-docs/swagger-ui-bundle.js").status_code == 200
    page = server.client.get("/").text
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert "/static/app.js" in links and all(link.startswith("/") for link in links)  # nothing from elsewhere
    assert server.client.get("/static/app.js").status_code == 200
    people = server.client.get("/people").text
    links = re.findall(r'(?:src|href)="([^"]*)"', people)
    assert "/static/people.js" in links and all(link.startswith("/") for link in links)
    assert server.client.get("/static/people.js").status_code == 200


def test_ids_and_offsets_beyond_64_bits_are_a_422_not_a_500(server):
    too_big = 2**63  # SQLite's integers are 64-bit signed: this one raised OverflowError (a 500) below the routes
    assert server.client.delete(f"/v1/faces/{too_big}").status_code == 422
    assert server.client.get(f"/v1/faces/{too_big}/thumbnail").status_code == 422
    assert server.client.get("/v1/identities", params={"offset": too_big}).status_code == 422
    assert server.client.delete(f"/v1/faces/{too_big - 1}").status_code == 404  # the largest id: not found
    assert server.client.get("/v1/health").json()["status"] == "ok"
