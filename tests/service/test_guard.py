"""Requests a browser could be tricked into sending, refused; the headers every answer carries."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest
from servers import ThreadServer


def enrol(s, photos, name: str, **headers):
    path = photos / "astronaut.jpg"
    return s.client.post(f"/v1/identities/{name}/faces", files={"photos": (path.name, path.read_bytes(), "image/jpeg")},
                         headers=headers)


def faces(s) -> int:
    return s.client.get("/v1/stats").json()["faces"]


def test_a_form_posted_from_another_site_enrols_nobody(server, photos):
    before = faces(server)
    r = enrol(server, photos, "mallory", Origin="http://attacker.example")
    assert r.status_code == 403 and "from another origin (http://attacker.example) is refused" in r.json()["detail"]
    r = server.client.delete("/v1/identities/eileen", headers={"Origin": "null"})  # a sandboxed frame, a data: page
    assert r.status_code == 403
    r = enrol(server, photos, "mallory", **{"Sec-Fetch-Site": "cross-site"})  # a browser that sent no Origin
    assert r.status_code == 403
    assert faces(server) == before
    assert enrol(server, photos, "same", Origin=server.url).status_code == 201  # the page itself
    assert enrol(server, photos, "script").status_code == 201  # no Origin: curl, a script
    assert server.client.get("/v1/stats", headers={"Origin": "http://attacker.example"}).status_code == 200


def test_an_origin_given_with_cors_origin_may_write(config, embedder, photos):
    with ThreadServer(dataclasses.replace(config, cors_origins=("https://app.example",)), embedder) as s:
        assert enrol(s, photos, "partner", Origin="https://app.example").status_code == 201
        assert enrol(s, photos, "other", Origin="https://evil.example").status_code == 403


def test_an_unknown_host_is_refused_when_the_server_knows_its_names(config, embedder):
    from facesearch.cli.serve import _allowed_hosts

    hosts = _allowed_hosts("127.0.0.1", ["faces.lan"])
    assert hosts == ("localhost", "127.0.0.1", "::1", "faces.lan") and _allowed_hosts("0.0.0.0", []) == ()
    with ThreadServer(dataclasses.replace(config, allowed_hosts=hosts), embedder) as s:
        assert s.client.get("/v1/health").status_code == 200  # Host: 127.0.0.1:<port>
        r = s.client.get("/v1/health", headers={"Host": "attacker.example"})  # DNS rebinding
        assert r.status_code == 400 and "Host 'attacker.example' is not a name this server answers to" in r.text
        for name in ("localhost:8000", "[::1]:8000", "FACES.lan"):
            assert s.client.get("/v1/health", headers={"Host": name}).status_code == 200, name


@pytest.mark.parametrize("path", ["/", "/v1/health", "/static/app.js", "/v1/identities/nobody"])
def test_every_answer_carries_the_security_headers(server, path):
    r = server.client.get(path)
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_the_api_docs_keep_their_own_scripts(server):
    r = server.client.get("/docs")
    assert r.status_code == 200 and "content-security-policy" not in r.headers
    assert r.headers["x-frame-options"] == "DENY"


def test_a_path_cannot_forge_a_log_line(server, caplog):
    with caplog.at_level(logging.INFO, logger="facesearch.service"):
        server.client.get("/v1/identities/x%0A2026-01-01 INFO facesearch.service: GET / 200")
        # The line is written after the answer has gone out (in the server's thread): wait for it.
        deadline = time.monotonic() + 10
        while not (lines := [r.getMessage() for r in caplog.records if "/v1/identities/x" in r.getMessage()]):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
    assert all("\n" not in line for line in lines) and "%0A" in lines[0], lines
