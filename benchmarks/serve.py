"""The service's speed: query latency and throughput by concurrency, warm HTTP vs a cold CLI query,
and enrolment latency on a 1M-face index.

    python benchmarks/serve.py gallery [--identities 1680] [--duration 20] [--clients 1 4 16] [--workdir W]
    python benchmarks/serve.py enrol-1m [--faces 1000000] [--enrolments 5] [--workdir W]

`gallery`: indexes the first photo of LFW people with at least two photos (1,680; a folder of links,
`facesearch build-index`, kept in the work folder for the next run), starts `facesearch serve` on it,
and sends their second photos from N concurrent clients (asyncio + httpx, each client one request
at a time) for a fixed duration per N: p50/p99 latency, queries/s, errors and the server's resident
memory before and after (the highest N runs twice: memory is flat if the second run adds nothing). Then the same photo, warm over HTTP (median of 20) vs a cold
`facesearch query --json` process (median of 3): the ratio.

`enrol-1m`: a synthetic index of `--faces` random unit vectors (128-d, the default model's card, flat,
written through `IndexWriter` as a folder build would), then enrolling one photo (a crop of
scikit-image's astronaut) `--enrolments` times: through `IndexWriter` alone (timed by step: open,
stage, commit's segment / metadata / manifest steps, close) and through the API of a server on
that index (the whole request, detection and embedding included).

Needs the default model installed (`facesearch models install dlib-resnet`) and the [serve] extra.
Prints a table and then the same figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_LFW = Path(__file__).resolve().parents[2] / "shared" / "lfw" / "images_deepfunneled"
FACESEARCH = shutil.which("facesearch", path=os.path.dirname(sys.executable)) or "facesearch"


# ------------------------------------------------------------------ a server in a child process


class Server:
    """`facesearch serve --index INDEX --port 0` until closed; its URL and pid."""

    def __init__(self, index: Path, log: Path, *args: str):
        self.log = log
        self._out = open(log, "wb")
        started = time.perf_counter()
        self.process = subprocess.Popen([FACESEARCH, "serve", "--index", str(index), "--port", "0", *args],
                                        stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while not (m := re.search(r"Uvicorn running on (http://\S+:\d+)", log.read_text(errors="replace"))):
            if self.process.poll() is not None:
                raise RuntimeError(f"facesearch serve exited:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.url = m.group(1)
        self.start_seconds = time.perf_counter() - started

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self._out.close()


async def _load(url: str, photos: list[bytes], clients: int, duration: float) -> tuple[list[float], int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def client(offset: int) -> None:
        nonlocal errors
        i = offset
        async with httpx.AsyncClient(base_url=url, timeout=300, trust_env=False) as c:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                r = await c.post("/v1/query", files={"photo": ("p.jpg", photos[i % len(photos)], "image/jpeg")})
                latencies.append(time.perf_counter() - started)
                errors += r.status_code != 200
                i += clients

    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, errors


def load(url: str, photos: list[bytes], clients: int, duration: float) -> dict:
    started = time.perf_counter()
    latencies, errors = asyncio.run(_load(url, photos, clients, duration))
    seconds = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"clients": clients, "queries": len(latencies), "errors": errors, "seconds": round(seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "queries_per_s": round(len(latencies) / seconds, 2)}


# ------------------------------------------------------------------ gallery: latency, throughput, cold vs warm


def lfw_split(lfw: Path, identities: int) -> tuple[list[Path], list[Path]]:
    """First and second photo of the first `identities` people (sorted) with at least two photos."""
    firsts, seconds = [], []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 2:
            firsts.append(photos[0])
            seconds.append(photos[1])
        if len(firsts) == identities:
            break
    return firsts, seconds


def run_gallery(args) -> dict:
    firsts, probes = lfw_split(Path(args.lfw), args.identities)
    work = Path(args.workdir)
    gallery, index = work / "gallery", work / "index"
    if not (index / "manifest.json").is_file():
        shutil.rmtree(gallery, ignore_errors=True)
        for photo in firsts:
            (gallery / photo.parent.name).mkdir(parents=True, exist_ok=True)
            (gallery / photo.parent.name / photo.name).symlink_to(photo)
        started = time.perf_counter()
        subprocess.run([FACESEARCH, "build-index", str(gallery), "--index", str(index), "--json"], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"indexed {len(firsts)} identities in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    stats = json.loads(subprocess.run([sys.executable, "-c", "import json,sys; from facesearch.index import read_manifest; "
                                       "m = read_manifest(sys.argv[1]); print(json.dumps([m.faces, m.identities]))",
                                       str(index)], capture_output=True, text=True, check=True).stdout)
    photos = [p.read_bytes() for p in probes]
    server = Server(index, work / "serve.log")
    out = {"gallery": {"faces": stats[0], "identities": stats[1]}, "server_start_s": round(server.start_seconds, 2),
           "cpu": os.cpu_count(), "load": []}
    try:
        load(server.url, photos[:8], 2, 3.0)  # warm-up
        # The highest concurrency runs twice: memory is flat when the second run ends where the first did
        # (each new server thread's first model run takes its scratch memory once).
        for clients in [*args.clients, args.clients[-1]]:
            before = server.rss_mb()
            row = load(server.url, photos, clients, args.duration)
            row |= {"rss_before_mb": round(before, 1), "rss_after_mb": round(server.rss_mb(), 1)}
            out["load"].append(row)
            print(f"  {clients:>2} clients: {row}", file=sys.stderr)
        out["warm_vs_cold"] = warm_vs_cold(server, probes[0], index)
    finally:
        server.close()
    return out


def warm_vs_cold(server: Server, photo: Path, index: Path, warm_runs: int = 20, cold_runs: int = 3) -> dict:
    import httpx

    data = photo.read_bytes()
    warm = []
    with httpx.Client(base_url=server.url, timeout=300, trust_env=False) as c:
        for _ in range(warm_runs):
            started = time.perf_counter()
            r = c.post("/v1/query", files={"photo": (photo.name, data, "image/jpeg")})
            warm.append(time.perf_counter() - started)
            r.raise_for_status()
    cold = []
    for _ in range(cold_runs):
        started = time.perf_counter()
        subprocess.run([FACESEARCH, "query", str(photo), "--index", str(index), "--json"], check=True,
                       stdout=subprocess.DEVNULL)
        cold.append(time.perf_counter() - started)
    w, c = statistics.median(warm), statistics.median(cold)
    return {"photo": photo.name, "warm_http_ms": round(w * 1000, 1), "cold_cli_ms": round(c * 1000, 1),
            "ratio": round(c / w, 1)}


# ------------------------------------------------------------------ enrolment on a 1M-face index


def build_synthetic(index: Path, faces: int, seed: int = 0, model_dir: Path | None = None) -> dict:
    """`faces` random unit vectors, 5 per identity, as a folder build of the default model would write them.

    A build calibrates the index's open-set threshold in its commit (`facesearch.index.openset.open_set`); on 1M faces
    that search takes longer than the rest of the build, so the estimate is made here from a sample
    of 1,000 identities (`calibrate_gallery`, numpy) and stored as given: the index is then in the
    state a calibrated one is in, where an enrolment keeps the estimate (it changes the counts by
    far less than x1.25) instead of computing one.
    """
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.embedder.dlib.models import installed_model_dir
    from facesearch.index import IndexPolicy, open_writer
    from facesearch.index.openset.calibration import calibrate_gallery
    from facesearch.index.storage.store import Photo

    model_dir = model_dir or installed_model_dir()
    if model_dir is None:
        raise SystemExit("the default model is not installed: run `facesearch models install dlib-resnet` first")
    card = ModelCard.load(model_dir)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    vectors = rng.standard_normal((faces, card.embedding_size)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    identities = np.arange(faces) // 5
    calibration = calibrate_gallery(vectors, identities, max_identities=1000, seed=seed)
    calibrated = time.perf_counter() - started
    build = {"faces": "largest", "crops": "dlib-5-point-chip/dlib-150"}
    with open_writer(index, card=card, model_dir=model_dir, source_dir=index.parent / "synthetic-photos",
                          build=build, policy=IndexPolicy(index_type="flat")) as w:
        for f in range(faces):
            w.add_photo(Photo(f"id{f // 5:06d}/{f % 5}.jpg", f"id{f // 5:06d}", 1000, 0, f"{f:064x}", 1),
                        [(0, (10.0, 10.0, 60.0, 60.0))], vectors[f:f + 1])
        w.request_calibration(calibration.target_fpir, calibration=calibration.to_dict())
        result = w.commit(merge=False)
    return {"faces": result.faces, "identities": result.identities, "calibration_s": round(calibrated, 1),
            "seconds": round(time.perf_counter() - started, 1), "commit": {k: round(v, 2) for k, v in
                                                                           result.seconds.items()}}


def astronaut_crops(n: int) -> list[bytes]:
    from PIL import Image
    from skimage import data

    image, out = data.astronaut(), []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image[0:500 - 3 * i, 2 * i:])).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def enrol_with_writer(index: Path, photo: bytes, identity: str) -> dict:
    """One enrolment through `IndexWriter` alone, timed by step (the photo embedded beforehand)."""
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.embedder.dlib.models import installed_model_dir
    from facesearch.index import open_writer
    from facesearch.index.storage.photostore import PhotoStore, enrolled_path, sha256_bytes
    from facesearch.index.storage.store import Photo

    card = ModelCard.load(installed_model_dir())
    v = np.random.default_rng(len(identity)).standard_normal((1, card.embedding_size)).astype(np.float32)
    v /= np.linalg.norm(v)
    sha = sha256_bytes(photo)
    t = {}
    started = time.perf_counter()
    PhotoStore(index).put(photo, ".jpg", sha)
    t["photo_store"] = time.perf_counter() - started
    mark = time.perf_counter()
    with open_writer(index, card=card, model_dir=installed_model_dir()) as w:
        t["open"] = time.perf_counter() - mark
        mark = time.perf_counter()
        w.add_photo(Photo(enrolled_path(identity, sha, ".jpg"), identity, len(photo), time.time_ns(), sha, 1,
                          source="api"), [(0, (1.0, 1.0, 50.0, 50.0))], v)
        t["stage"] = time.perf_counter() - mark
        mark = time.perf_counter()
        result = w.commit(merge=False)
        t["commit"] = time.perf_counter() - mark
        t |= {f"commit.{k}": v for k, v in result.seconds.items()}
        mark = time.perf_counter()
    t["close"] = time.perf_counter() - mark
    t["total"] = time.perf_counter() - started
    return {k: round(v * 1000, 1) for k, v in t.items()}


def profile_open(index: Path) -> dict:
    """Where `IndexWriter.open` spends its time on this index: each step of `_load` on its own."""
    from facesearch.index.storage.gallery import read_tombstones
    from facesearch.index.storage.manifest import read_manifest
    from facesearch.index.storage.segments import Segment
    from facesearch.index.storage.store import IndexStore

    t = {}
    mark = time.perf_counter()
    m = read_manifest(index)
    t["read_manifest"] = time.perf_counter() - mark
    mark = time.perf_counter()
    [Segment.open(index, info, m.dim) for info in m.segments]
    t["segments_open"] = time.perf_counter() - mark
    mark = time.perf_counter()
    read_tombstones(index, m)
    t["tombstones"] = time.perf_counter() - mark
    mark = time.perf_counter()
    store = IndexStore.open_writer(index / m.metadata_file, m.generation)  # includes the crash rollback's scans
    t["metadata_open_and_rollback"] = time.perf_counter() - mark
    mark = time.perf_counter()
    store.purge(before=m.generation - 2)
    t["purge"] = time.perf_counter() - mark
    store.close()
    return {k: round(v * 1000, 1) for k, v in t.items()}


def run_enrol_1m(args) -> dict:
    import httpx

    work = Path(args.workdir)
    index = work / f"synthetic-{args.faces}"
    out: dict = {"faces": args.faces}
    if not (index / "manifest.json").is_file():
        shutil.rmtree(index, ignore_errors=True)
        out["build"] = build_synthetic(index, args.faces)
        print(f"built {out['build']}", file=sys.stderr)
    photos = astronaut_crops(2 * args.enrolments + 1)
    out["profile_open"] = profile_open(index)
    out["writer"] = [enrol_with_writer(index, photos[i], f"writer{i}") for i in range(args.enrolments)]
    server = Server(index, work / "serve-1m.log")
    out["server_start_s"] = round(server.start_seconds, 2)
    api = []
    try:
        with httpx.Client(base_url=server.url, timeout=300, trust_env=False) as c:
            c.post("/v1/query", files={"photo": ("w.jpg", photos[-1], "image/jpeg")}).raise_for_status()  # warm
            for i in range(args.enrolments):
                started = time.perf_counter()
                r = c.post(f"/v1/identities/api{i}/faces", files={"photos": ("p.jpg", photos[args.enrolments + i],
                                                                              "image/jpeg")})
                api.append(round((time.perf_counter() - started) * 1000, 1))
                r.raise_for_status()
            started = time.perf_counter()
            answer = c.post("/v1/query", files={"photo": ("q.jpg", photos[args.enrolments], "image/jpeg")}).json()
            out["query_after_ms"] = round((time.perf_counter() - started) * 1000, 1)
            out["query_after_verdict"] = answer["faces"][0]["verdict"]
            out["stats"] = c.get("/v1/stats").json()
    finally:
        server.close()
    out["api_enrol_ms"] = api
    out["api_enrol_median_ms"] = statistics.median(api)
    out["writer_total_median_ms"] = statistics.median(r["total"] for r in out["writer"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gallery")
    g.add_argument("--lfw", default=str(DEFAULT_LFW))
    g.add_argument("--identities", type=int, default=1680)
    g.add_argument("--duration", type=float, default=20.0, help="seconds of load per client count")
    g.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    e = sub.add_parser("enrol-1m")
    e.add_argument("--faces", type=int, default=1_000_000)
    e.add_argument("--enrolments", type=int, default=5)
    for p in (g, e):
        p.add_argument("--workdir", default=None, help="kept between runs (default: a temporary folder)")
    args = parser.parse_args()
    temporary = args.workdir is None
    if temporary:
        args.workdir = tempfile.mkdtemp(prefix="facesearch-serve-bench-")
    try:
        result = run_gallery(args) if args.what == "gallery" else run_enrol_1m(args)
    finally:
        if temporary:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
