"""One photo, one index, three doors: the API, the CLI and the service give the same verdicts."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import facesearch
from facesearch.cli.main import app


def test_api_cli_and_service_answer_a_photo_alike(server, config, photos, default_model):
    photo = photos / "group.jpg"
    api = json.loads(json.dumps(facesearch.open(config.index_dir, model=default_model).search(photo, k=2).to_dict()))
    r = CliRunner().invoke(app, ["query", str(photo), "--index", config.index_dir, "--model", str(default_model),
                                 "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout)
    http = server.client.post("/v1/query", files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")},
                              params={"k": 2})
    assert http.status_code == 200, http.text
    service = http.json()
    assert api == cli
    assert service["faces"] == api["faces"]  # identity or unknown, score, threshold, matches, face by face
    for key in ("threshold", "threshold_source", "model"):
        assert service[key] == api[key], key
    assert sorted(f["identity"] for f in api["faces"]) == ["cameraman", "eileen"]


def test_api_cli_and_service_verify_alike(server, photos, default_model):
    a, b = photos / "astronaut.jpg", photos / "camera.png"
    api = facesearch.verify(a, b, model=default_model).to_dict()
    r = CliRunner().invoke(app, ["verify", str(a), str(b), "--model", str(default_model), "--json"])
    assert r.exit_code == 0, r.output
    http = server.client.post("/v1/verify", files={"photo1": (a.name, a.read_bytes(), "image/jpeg"),
                                                   "photo2": (b.name, b.read_bytes(), "image/png")})
    assert http.status_code == 200, http.text
    cli, service = json.loads(r.stdout), http.json()
    for answer in (cli, service):
        assert {k: answer[k] for k in ("same", "score", "threshold", "threshold_source", "model")} == {
            k: api[k] for k in ("same", "score", "threshold", "threshold_source", "model")}
    assert api["same"] is False
    assert [p["box"] for p in service["photos"]] == [p["box"] for p in api["photos"]]


def test_a_removal_the_api_refuses_is_a_404_over_http(server):
    r = server.client.delete("/v1/identities/nobody")
    assert r.status_code == 404 and r.json()["detail"] == "identity 'nobody' is not in the index"
