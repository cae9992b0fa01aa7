"""What a hostile client does to `facesearch serve`: each attack's answer, its time, and the server's peak memory.

Starts `facesearch serve` (one process, an API key, a small index of one LFW person) and sends, one class at a
time, the inputs issue 22 found the server fell to, then checks that it still answers a query:

1. tiled:     a 4000x4000 JPEG of one face tiled at 80 px (2,500 faces): once 24 GB and a kill by the kernel;
2. small-png: a PNG of 724 small tiled faces: once 8.6 s, 3.9 GB and a 962 KB answer;
3. flat-pngs: one enrolment of 32 flat 40-megapixel PNGs: once 5.9 GB and a 422 after 40 s;
4. slowloris: 200 connections that send half a request line and stop;
5. stalled:   5 keyed uploads that stop at 19 of 20 MiB;
6. overload:  64 queries at once against 8 read slots and a queue of 32 (503s expected, no 5xx else);
7. big ids:   DELETE /v1/faces/2**63 and offsets of 2**63.

A first row, baseline, is the server after its start and one query. Peak memory is the server's VmHWM (/proc/PID/status) after each step. Needs ../shared/lfw (or $FACESEARCH_LFW).

    python benchmarks/hostile.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

KEY = "hostile-benchmark-key-0123456789"


def _peak_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=90)
    return out.getvalue()


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    lfw = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).resolve().parents[2] / "shared" / "lfw"))
    person = lfw / "images_deepfunneled" / "Colin_Powell"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hostile-"))
    (work / "gallery" / "Colin_Powell").mkdir(parents=True, exist_ok=True)
    photos = sorted(person.glob("*.jpg"))
    for photo in photos[:3]:
        shutil.copy(photo, work / "gallery" / "Colin_Powell")
    exe = shutil.which("facesearch", path=os.path.dirname(sys.executable))
    subprocess.run([exe, "build-index", work / "gallery", "--index", work / "idx"], check=True, capture_output=True)
    (work / "keys").write_text(KEY + "\n")
    log = open(work / "serve.log", "wb")
    server = subprocess.Popen([exe, "serve", "--index", work / "idx", "--port", "0", "--api-key-file", work / "keys"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        url = None
        for _ in range(600):
            if m := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", (work / "serve.log").read_text()):
                url = m.group(1)
                break
            time.sleep(0.1)
        assert url, (work / "serve.log").read_text()
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120, trust_env=False)
        face = np.asarray(Image.open(photos[3]).convert("RGB"))[60:190, 70:180]
        probe = photos[4].read_bytes()
        rows = []

        def step(name: str, fn) -> None:
            started = time.perf_counter()
            try:
                what = fn()
            except Exception as e:  # a client-side failure (a reset connection) is a result too
                what = f"client error: {type(e).__name__}: {e}"
            seconds = time.perf_counter() - started
            alive = client.post("/v1/query", files={"photo": ("p.jpg", probe, "image/jpeg")}).status_code
            rows.append((name, what, seconds, _peak_mb(server.pid), alive))
            print(f"{name:10s} {what[:90]:90s} {seconds:6.1f} s  peak {rows[-1][3]:6.0f} MB  query after: {alive}",
                  flush=True)

        step("baseline", lambda: "started, one query answered (the line's own query)")
        tile80 = np.asarray(Image.fromarray(face).resize((80, 80)))
        tiled = _jpeg(np.tile(tile80, (50, 50, 1)))
        step("tiled", lambda: _status(client.post("/v1/query", files={"photo": ("t.jpg", tiled, "image/jpeg")})))
        tile24 = np.asarray(Image.fromarray(face).resize((24, 24)))
        small = _png(np.tile(tile24, (27, 27, 1)))
        step("small-png", lambda: _status(client.post("/v1/query", files={"photo": ("s.png", small, "image/png")})))
        flat = _png(np.full((5000, 8000, 3), 128, np.uint8))
        step("flat-pngs", lambda: _status(client.post("/v1/identities/flat/faces", files=[
            ("photos", (f"f{i}.png", flat, "image/png")) for i in range(32)])))
        step("slowloris", lambda: _slowloris(url, 200))
        step("stalled", lambda: _stalled(url, 5))
        step("overload", lambda: _overload(url, probe, 64))
        step("big ids", lambda: ", ".join(_status(r) for r in (
            client.delete(f"/v1/faces/{2**63}"), client.get("/v1/identities", params={"offset": 2**63}))))
        print("\n| attack | answer | seconds | server peak MB | query after |\n|---|---|---|---|---|")
        for name, what, seconds, peak, alive in rows:
            print(f"| {name} | {what} | {seconds:.1f} | {peak:.0f} | {alive} |")
    finally:
        server.terminate()
        server.wait(60)
        log.close()


def _status(r: httpx.Response) -> str:
    detail = r.json().get("detail", "") if r.headers.get("content-type", "").startswith("application/json") else ""
    return f"{r.status_code} {str(detail)[:70]}".strip()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _slowloris(url: str, n: int) -> str:
    socks = []
    for _ in range(n):
        s = socket.create_connection(_address(url), timeout=60)
        s.sendall(b"GET /v1/health HT")
        socks.append(s)
    started = time.monotonic()
    closed = sum(1 for s in socks if s.recv(1) == b"")
    for s in socks:
        s.close()
    return f"{closed} of {n} closed by the server within {time.monotonic() - started:.1f} s"


def _stalled(url: str, n: int) -> str:
    answers = []
    for _ in range(n):
        s = socket.create_connection(_address(url), timeout=60)
        s.sendall(b"POST /v1/identities/x/faces HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 20971520\r\n\r\n--b\r\n"
                  + b"Content-Disposition: form-data; name=\"photos\"; filename=\"a.jpg\"\r\n\r\n" + b"x" * 19_000_000)
        answers.append(s)
    codes = [s.recv(12).decode(errors="replace")[9:12] for s in answers]
    return f"answers {sorted(set(codes))} to {n} stalled uploads"


def _overload(url: str, probe: bytes, n: int) -> str:
    def one(_):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120, trust_env=False) as c:
            return c.post("/v1/query", files={"photo": ("p.jpg", probe, "image/jpeg")}).status_code

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(one, range(n)))
    return ", ".join(f"{codes.count(c)} x {c}" for c in sorted(set(codes)))


if __name__ == "__main__":
    main()
