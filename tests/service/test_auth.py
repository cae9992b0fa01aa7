"""Safe to expose: API keys on every endpoint but /v1/health, and no exposed address without one."""

from __future__ import annotations

import dataclasses

import pytest
from servers import ThreadServer, client
from typer.testing import CliRunner

from facesearch.cli.main import app
from facesearch.service import ServiceConfigError, check_bind, read_api_keys
from facesearch.service.auth import key_matches

KEY = "k3y-for-the-tests-0123456789abcdef"
ENDPOINTS = [("POST", "/v1/query"), ("POST", "/v1/verify"), ("POST", "/v1/identities/x/faces"),
             ("GET", "/v1/identities"), ("GET", "/v1/identities/eileen"), ("DELETE", "/v1/identities/eileen"),
             ("DELETE", "/v1/faces/0"), ("GET", "/v1/faces/0/thumbnail"), ("GET", "/v1/stats")]


@pytest.fixture
def keyed(config, embedder):
    with ThreadServer(dataclasses.replace(config, api_keys=("an-older-key-still-accepted", KEY)), embedder) as s:
        yield s


def test_every_endpoint_but_health_needs_the_key(keyed, photos):
    files = {"photo": ("a.jpg", (photos / "astronaut.jpg").read_bytes(), "image/jpeg")}
    for key in (None, "wrong-key-of-the-same-kind-0123456", KEY[:-1], KEY + "x"):
        with client(keyed.url, key) as c:
            for method, path in ENDPOINTS:
                r = c.request(method, path, files=files if method == "POST" else None)
                assert r.status_code == 401, (key, method, path, r.text)
                assert "Authorization: Bearer <key>" in r.json()["detail"]
                assert r.headers["www-authenticate"] == "Bearer"
            assert c.get("/v1/identities", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    with client(keyed.url) as anonymous:
        assert anonymous.get("/v1/health").json()["status"] == "ok"
        assert anonymous.get("/").status_code == 200  # the page holds no data; it asks for the key
    with client(keyed.url, KEY) as c:  # the right key: every endpoint answers
        assert c.get("/v1/stats").json()["auth"] is True
        assert c.post("/v1/query", files=files).json()["faces"][0]["verdict"] == "eileen"
        assert c.get("/v1/identities/eileen").status_code == 200
        assert c.get(f"/v1/faces/{c.get('/v1/identities/eileen').json()['photos'][0]['faces'][0]['id']}/thumbnail"
                     ).status_code == 200
        assert c.delete("/v1/identities/eileen").status_code == 200
    with client(keyed.url, "an-older-key-still-accepted") as c:  # several keys: a rotation
        assert c.get("/v1/stats").status_code == 200


def test_keys_compare_whole():
    keys = ("0123456789abcdef-0", "another-key-0123456789")
    assert key_matches("another-key-0123456789", keys)
    for given in ("", "0123456789abcdef", "0123456789abcdef-", "0123456789abcdef-00", "another-key-012345678 "):
        assert not key_matches(given, keys)


def test_key_files(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\n\n  one-key-long-enough-0001  \nsecond-key-long-enough-2\n")
    assert read_api_keys(f) == ("one-key-long-enough-0001", "second-key-long-enough-2")
    for text, message in (("", "holds no key"), ("# only a comment\n", "holds no key"),
                          ("short\n", "shorter than 16 characters")):
        f.write_text(text)
        with pytest.raises(ServiceConfigError, match=message):
            read_api_keys(f)
    with pytest.raises(ServiceConfigError, match="cannot read the API key file"):
        read_api_keys(tmp_path / "missing")


def test_an_exposed_address_needs_a_key_or_insecure():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_bind(host, has_key=False, insecure=False)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        with pytest.raises(ServiceConfigError, match="refusing to listen on"):
            check_bind(host, has_key=False, insecure=False)
        check_bind(host, has_key=True, insecure=False)
        check_bind(host, has_key=False, insecure=True)


def test_serve_refuses_an_exposed_address_without_a_key(tmp_path):
    r = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "idx"), "--host", "0.0.0.0"])
    assert r.exit_code == 1, r.output
    assert "Error: refusing to listen on '0.0.0.0' without an API key" in r.output and "--api-key-file" in r.output
    (tmp_path / "keys").write_text("short\n")
    r = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "idx"), "--api-key-file", str(tmp_path / "keys")])
    assert r.exit_code == 1 and "shorter than 16 characters" in r.output
    assert not (tmp_path / "idx").exists()  # refused before anything was loaded or created


def test_the_key_is_checked_before_the_body_is_read(keyed):
    # 1,500 form parts and no key: the answer is the 401, not whatever parsing the body would have said.
    files = [("photos", (f"p{i}.jpg", b"x", "image/jpeg")) for i in range(1500)]
    with client(keyed.url) as anonymous:
        r = anonymous.post("/v1/identities/x/faces", files=files)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert "Authorization: Bearer <key>" in r.json()["detail"]
    with client(keyed.url, KEY) as c:
        assert c.post("/v1/identities/x/faces", files=files).status_code in (400, 413, 422)  # now it is read


def test_risky_but_allowed_starts_say_so():
    from facesearch.service.config import exposure_warnings

    assert exposure_warnings("127.0.0.1", False, False, ()) == []
    assert exposure_warnings("0.0.0.0", True, True, ()) == []  # a key: --insecure changes nothing
    (line,) = exposure_warnings("0.0.0.0", False, True, ())
    assert "with no API key (--insecure)" in line
    (line,) = exposure_warnings("127.0.0.1", False, False, ("*",))
    assert line.startswith("--cors-origin '*'") and line.endswith("with no key to stop it")
