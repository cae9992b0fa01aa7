"""Back-pressure and the work one request may cause: slots, queues, deadlines, pixel and face budgets."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time

import httpx
import pytest
from servers import ThreadServer

from facesearch.service.limits import Admission, Limits

# --- the admission middleware on its own, around an app whose requests wait until released -------------------

class Gate:
    """An ASGI app: each request waits for `release`, then answers 200; `inside` counts requests running."""

    def __init__(self):
        self.release = asyncio.Event()
        self.inside = 0

    async def __call__(self, scope, receive, send):
        self.inside += 1
        try:
            await self.release.wait()
        finally:
            self.inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def _until(condition, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def test_a_saturated_server_answers_503_at_once_when_its_queue_is_full():
    async def run():
        gate = Gate()
        app = Admission(gate, Limits(read_slots=1, write_slots=1, queue=0, queue_wait=30.0))
        async with _client(app) as c:
            first = asyncio.create_task(c.post("/v1/query"))
            await _until(lambda: gate.inside == 1)
            started = time.monotonic()
            busy = await c.post("/v1/query")
            waited = time.monotonic() - started
            gate.release.set()
            return (await first).status_code, busy, waited

    first, busy, waited = asyncio.run(run())
    assert first == 200
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2" and "queue full" in busy.json()["detail"]
    assert waited < 5.0  # at once, not after queue_wait (30 s)


def test_a_queued_request_waits_at_most_queue_wait_then_503():
    async def run():
        gate = Gate()
        app = Admission(gate, Limits(read_slots=1, write_slots=1, queue=4, queue_wait=0.3))
        async with _client(app) as c:
            first = asyncio.create_task(c.get("/v1/identities"))
            await _until(lambda: gate.inside == 1)
            started = time.monotonic()
            late = await c.get("/v1/identities")
            waited = time.monotonic() - started
            gate.release.set()
            return (await first).status_code, late.status_code, waited

    first, late, waited = asyncio.run(run())
    assert (first, late) == (200, 503) and 0.3 <= waited < 5.0


def test_a_queued_request_runs_when_a_slot_frees():
    async def run():
        gate = Gate()
        app = Admission(gate, Limits(read_slots=1, write_slots=1, queue=4, queue_wait=30.0))
        async with _client(app) as c:
            tasks = [asyncio.create_task(c.get("/v1/identities")) for _ in range(3)]
            await _until(lambda: gate.inside == 1 and app.pools["read"].waiting == 2)
            gate.release.set()
            return [(await t).status_code for t in tasks]

    assert asyncio.run(run()) == [200, 200, 200]


def test_waiting_writes_do_not_take_the_slots_of_reads_and_health_is_never_queued():
    async def run():
        gate = Gate()
        app = Admission(gate, Limits(read_slots=1, write_slots=1, queue=0, queue_wait=30.0))
        async with _client(app) as c:
            write = asyncio.create_task(c.delete("/v1/faces/1"))  # e.g. waiting for the index's write lock
            await _until(lambda: gate.inside == 1)
            second_write = await c.post("/v1/identities/x/faces")
            read = asyncio.create_task(c.post("/v1/query"))  # a POST that changes nothing: a read
            await _until(lambda: gate.inside == 2)
            health = asyncio.create_task(c.get("/v1/health"))  # past a full read pool too
            await _until(lambda: gate.inside == 3)
            gate.release.set()
            return second_write.status_code, (await write).status_code, (await read).status_code, \
                (await health).status_code

    assert asyncio.run(run()) == (503, 200, 200, 200)


# --- a real server on loopback ------------------------------------------------------------------------------

def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


@pytest.fixture
def run_protocol(monkeypatch):
    """ThreadServer with facesearch's h11 protocol (as `facesearch serve` runs it) and a 0.5 s header deadline."""
    import uvicorn

    from facesearch.service.protocol import HEADER_TIMEOUT_ENV, HeaderDeadlineProtocol

    monkeypatch.setenv(HEADER_TIMEOUT_ENV, "0.5")
    real = uvicorn.Config

    def with_protocol(*args, **kwargs):
        return real(*args, **kwargs, http=HeaderDeadlineProtocol)

    monkeypatch.setattr(uvicorn, "Config", with_protocol)


def test_headers_that_never_finish_lose_their_connection(config, embedder, run_protocol):
    with ThreadServer(config, embedder) as s:
        silent, partial = _raw(s.url), _raw(s.url)
        partial.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: headers never end
        started = time.monotonic()
        assert _read_all(silent) == b"" and _read_all(partial) == b""  # closed by the server
        assert time.monotonic() - started < 5.0
        assert s.client.get("/v1/health").status_code == 200  # and it still serves
        kept = _raw(s.url)  # a client that finishes its headers in time is answered, however slowly it types
        for piece in (b"GET /v1/health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"Connection: close\r\n\r\n"):
            kept.sendall(piece)
            time.sleep(0.1)
        assert _read_all(kept).startswith(b"HTTP/1.1 200")


def test_a_body_that_stops_arriving_gets_408_and_frees_its_slot(config, embedder):
    with ThreadServer(dataclasses.replace(config, body_timeout=0.5, write_slots=1, queue=0), embedder) as s:
        for _ in range(3):  # each stalled upload gives its only write slot back
            sock = _raw(s.url)
            sock.sendall(b"POST /v1/identities/slow/faces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
            started = time.monotonic()
            answer = _read_all(sock)
            assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving" in answer, answer[:300]
            assert time.monotonic() - started < 5.0
        assert s.client.get("/v1/identities/slow").status_code == 404  # nothing was enrolled


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(config, embedder, photos):
    big = (photos / "big.png").read_bytes()  # 4000 x 3000
    with ThreadServer(dataclasses.replace(config, max_request_pixels=20_000_000), embedder) as s:
        files = [("photos", (f"big{i}.png", big, "image/png")) for i in range(2)]
        r = s.client.post("/v1/identities/big/faces", files=files)
        assert r.status_code == 413 and "24,000,000 pixels together; one request may send 20,000,000" in r.text


def test_a_photo_with_more_faces_than_the_limit_is_refused(config, embedder, photos):
    group = (photos / "group.jpg").read_bytes()  # two faces
    with ThreadServer(dataclasses.replace(config, max_faces=1), embedder) as s:
        r = s.client.post("/v1/query", files={"photo": ("group.jpg", group, "image/jpeg")})
        assert r.status_code == 422 and "2 faces found; the limit is 1 per photo" in r.json()["detail"]
        one = (photos / "astronaut.jpg").read_bytes()
        assert s.client.post("/v1/query", files={"photo": ("a.jpg", one, "image/jpeg")}).status_code == 200


def test_names_are_stored_in_nfc_and_invalid_utf8_is_refused(server, photos):
    data = (photos / "astronaut.jpg").read_bytes()
    decomposed, composed = "Jose\u0301 Ferna\u0301ndez", "Jos\u00e9 Fern\u00e1ndez"
    r = server.client.post(f"/v1/identities/{decomposed}/faces", files={"photos": ("a.jpg", data, "image/jpeg")})
    assert r.status_code == 201 and r.json()["identity"] == composed
    assert server.client.get(f"/v1/identities/{composed}").status_code == 200  # one identity, however it is typed
    assert server.client.get(f"/v1/identities/{decomposed}").status_code == 200
    r = server.client.get("/v1/identities/bad%FFname")  # not UTF-8: decoded to U+FFFD
    assert r.status_code == 422 and "U+FFFD" in r.json()["detail"]


def test_api_keys_do_not_travel_in_the_workers_environment(tmp_path, monkeypatch, config):
    from facesearch.service.config import CONFIG_ENV, ServiceConfig

    key = "k" * 32
    (tmp_path / "keys").write_text(key + "\n")
    keyed = dataclasses.replace(config, api_keys=(key,), api_key_file=str(tmp_path / "keys"))
    text = keyed.to_json(with_keys=False)
    assert key not in text
    monkeypatch.setenv(CONFIG_ENV, text)
    assert ServiceConfig.from_environment().api_keys == (key,)  # each worker reads the file itself
    assert key not in os.environ[CONFIG_ENV]
