"""Large galleries: build, load, search, recall and updates of each index type at 100k, 1M and 10M faces.

Synthetic galleries with identity structure, matched to the default model's score distributions on
LFW (measured from its vectors: same-person cosine 0.950 +/- 0.018, different-person 0.834 +/- 0.035,
the vectors all lying in a cone whose mean has norm 0.91): each vector is
`normalise(a * m + b * c_identity + e * noise)` with a shared direction `m`, identity offsets `c`
drawn in a low-dimensional subspace (real identities do not spread over all 128 dimensions, which is
what makes different-person scores vary as much as LFW's) and per-photo noise. The script prints the
scores its own gallery reaches beside LFW's, so the match is checked, not assumed.

Each configuration runs in a child process (its peak RSS is its own), through facesearch's own
writer and reader: `IndexWriter` (build, then adding 1,000 faces as a new segment), `GalleryIndex`
(load, search, identity ranking). Exact answers come from numpy brute force over the same vectors.
Memory: `peak_rss_mb` is the whole child's peak (the brute force's scratch and every mapped page
included); `build_peak_mb` splits the build's peak into anonymous and file-backed (mapped files the
kernel can drop and read again), and `serving_peak_mb` is a fresh process that opens the index
and answers the 1,000 queries, beside its `baseline` before opening it.

    python benchmarks/scale.py --sizes 100000 1000000 --types flat hnsw ivf --out scale.json
    python benchmarks/scale.py --sizes 10000000 --types ivf --workdir /big/disk

Faces per identity: 5. Queries: 1,000 new photos (new noise) of enrolled identities.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

D = 128
SHARED, IDENTITY, NOISE = 0.913, 0.34, 0.22  # weights of the three parts (before normalising)
IDENTITY_RANK = 40  # dimensions the identity offsets span
SIGMA = 0.25  # spread (lognormal) of the per-photo noise level
CHUNK = 200_000


def _subspace(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(D).astype(np.float32)
    basis, _ = np.linalg.qr(rng.standard_normal((D, IDENTITY_RANK)))
    return shared / np.linalg.norm(shared), basis.T.astype(np.float32)


FACES_PER_IDENTITY = 5


def identity_of(face: np.ndarray) -> np.ndarray:
    """The identity of each face index: identities own consecutive runs of 5 faces."""
    return face // FACES_PER_IDENTITY


def _offsets(identities: np.ndarray, seed: int) -> np.ndarray:
    """Identity offsets `(len, IDENTITY_RANK)`: one generator per block of 65,536 identities, so any
    identity's offset is the same whichever slice of the gallery asks for it."""
    out = np.empty((len(identities), IDENTITY_RANK), np.float32)
    for block in np.unique(identities // 65536):
        values = np.random.default_rng([seed, 1, int(block)]).standard_normal((65536, IDENTITY_RANK)).astype(np.float32)
        here = identities // 65536 == block
        out[here] = values[identities[here] - block * 65536]
    return out


def _vectors(identities: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
    shared, basis = _subspace(seed)
    noise = rng.standard_normal((len(identities), D)).astype(np.float32)
    # Some photos are worse than others (pose, light, blur): a per-photo noise level.
    level = NOISE * rng.lognormal(0.0, SIGMA, (len(identities), 1)).astype(np.float32)
    x = SHARED * shared + IDENTITY * (_offsets(identities, seed) @ basis) / np.sqrt(IDENTITY_RANK) \
        + level * noise / np.sqrt(D)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_faces(start: int, count: int, *, seed: int = 0) -> np.ndarray:
    """Faces `start .. start + count` of the synthetic gallery, `(count, D)` float32, rows L2-normalised.

    Deterministic per chunk of CHUNK faces (the benchmark reads the gallery in those chunks).
    """
    out = np.empty((count, D), np.float32)
    for first in range(start, start + count, CHUNK):
        n = min(CHUNK, start + count - first)
        rng = np.random.default_rng([seed, 1, first])
        out[first - start:first - start + n] = _vectors(identity_of(np.arange(first, first + n)), rng, seed)
    return out


def score_check(seed: int = 0) -> dict:
    """Same- and different-identity cosines of this generator (to compare with LFW's)."""
    v = make_faces(0, 50_000, seed=seed)
    ids = identity_of(np.arange(50_000))
    rng = np.random.default_rng(3)
    a = rng.integers(0, 50_000, 100_000)
    same = np.einsum("ij,ij->i", v[a[:20_000] // 5 * 5], v[a[:20_000] // 5 * 5 + 1])
    b = rng.integers(0, 50_000, 100_000)
    diff = np.einsum("ij,ij->i", v[a], v[b])[ids[a] != ids[b]]
    return {"same_mean": float(same.mean()), "same_std": float(same.std()), "diff_mean": float(diff.mean()),
            "diff_std": float(diff.std()), "lfw": {"same_mean": 0.950, "same_std": 0.018, "diff_mean": 0.834,
                                                   "diff_std": 0.035}}


def queries(n: int, gallery_faces: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` new photos (new noise) of enrolled identities: (vectors, their identities)."""
    faces = np.sort(np.random.default_rng(11).choice(gallery_faces, n, replace=False))
    identities = identity_of(faces)
    return _vectors(identities, np.random.default_rng([seed, 2]), seed), identities


def exact_neighbours(n: int, q: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k face indices and scores over the whole gallery, streamed in chunks."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start in range(0, n, CHUNK):
        x = make_faces(start, min(CHUNK, n - start), seed=seed)
        s = q @ x.T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def sweep(g, q: np.ndarray, exact_i: np.ndarray) -> list[dict]:
    """p50 latency and recall of an approximate segment at search parameters up to its tuned one."""
    seg = g.segments[0]
    if seg.exact:
        return []
    tuned = seg.spec
    rows = []
    value = 16
    while value <= (tuned.ef_search or tuned.nprobe):
        seg.spec = tuned.with_search(value)
        _, found = g.search(q, 10)
        lat = []
        for i in range(300):
            t = time.perf_counter()
            g.search(q[i:i + 1], 10)
            lat.append(time.perf_counter() - t)
        rows.append({"search": value, "p50_ms": 1000 * float(np.median(lat)),
                     "recall_at_1": float(np.mean(found[:, 0] == exact_i[:, 0])),
                     "recall_at_10": float(np.mean([len(set(found[i]) & set(exact_i[i])) / 10
                                                    for i in range(len(q))]))})
        value *= 2
    seg.spec = tuned
    return rows


class MemoryPeaks:
    """Peak resident memory of this process, anonymous and file-backed apart, sampled every 0.1 s.

    `ru_maxrss` counts the pages of memory-mapped files too (the raw vectors, an IVF file), which
    the kernel can drop and read again; the anonymous part is what the process itself needs.
    """

    def __init__(self):
        self.peaks = {"anon": 0, "file": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> dict:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                fields[name[3:].lower()] = int(value.split()[0]) * 1024
        return fields

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, value in self.now().items():
                self.peaks[name] = max(self.peaks[name], value)

    def take(self) -> dict:
        """The peaks since the last take, in MB, and start again."""
        peaks, self.peaks = self.peaks, {"anon": 0, "file": 0}
        return {name: round(value / 2**20) for name, value in peaks.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def serving_memory(idx: Path, n: int, seed: int) -> dict:
    """Open the index in a fresh process, answer 1,000 single queries and one batch: its peak memory (MB).

    `baseline` is the process before it opens the index (Python, numpy, FAISS, facesearch imported).
    """
    from facesearch.index import GalleryIndex

    q, _ = queries(1000, n, seed)
    baseline = {name: round(value / 2**20) for name, value in MemoryPeaks.now().items()}
    peaks = MemoryPeaks()
    g = GalleryIndex.open(idx)
    for i in range(len(q)):
        g.search(q[i:i + 1], 10)
    g.search(q, 10)
    time.sleep(0.2)
    out = peaks.take() | {"baseline": baseline}
    peaks.stop()
    g.close()
    return out


def run_one(n: int, kind: str, workdir: Path, budget: int | None, seed: int = 0,
            target_recall: float = 0.99) -> dict:
    """Build an index of `n` faces of type `kind` and measure it (run in a child process)."""
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.index import GalleryIndex, IndexPolicy, open_writer, rank_identities
    from facesearch.index.storage.store import Photo

    card = ModelCard(name="synthetic", input_height=150, input_width=150, embedding_size=D,
                     alignment_template="none")
    (workdir / "model").mkdir(parents=True, exist_ok=True)
    idx = workdir / f"idx-{n}-{kind}"
    shutil.rmtree(idx, ignore_errors=True)
    policy = IndexPolicy(index_type=kind, memory_budget=budget, target_recall=target_recall)
    out: dict = {"faces": n, "type": kind}
    memory = MemoryPeaks()
    t = time.perf_counter()
    with open_writer(idx, card=card, model_dir=workdir / "model", policy=policy) as w:
        for start in range(0, n, CHUNK):
            x = make_faces(start, min(CHUNK, n - start), seed=seed)
            for j, v in enumerate(x):
                f = start + j
                w.add_photo(Photo(f"{f}.jpg", f"id{identity_of(np.int64(f))}", 1, 0, str(f), 1, "api"),
                            [(0, None)], v[None])
        result = w.commit(merge=False)
        segment = w.manifest.segments[-1]
    out["build_s"] = time.perf_counter() - t
    out["build_peak_mb"] = memory.take()
    out["segment"] = {"kind": segment.kind, "spec": segment.spec}
    out["disk_bytes"] = sum(p.stat().st_size for p in idx.iterdir() if p.is_file())
    out["commit_seconds"] = result.seconds

    q, q_ids = queries(1000, n, seed)
    t = time.perf_counter()  # open, and answer a first query (a flat segment builds its index then)
    g = GalleryIndex.open(idx)
    g.search(q[:1], 10)
    out["load_s"] = time.perf_counter() - t
    exact_s, exact_i = exact_neighbours(n, q, 10, seed)
    # ids were given in face order from 0, so a face index is its id
    lat = []
    found = np.empty((len(q), 10), np.int64)
    for i in range(len(q)):
        t = time.perf_counter()
        _, ids = g.search(q[i:i + 1], 10)
        lat.append(time.perf_counter() - t)
        found[i] = ids[0]
    lat_ms = 1000 * np.array(lat)
    out["query_p50_ms"], out["query_p99_ms"] = float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 99))
    t = time.perf_counter()
    g.search(q, 10)
    out["batch_qps"] = len(q) / (time.perf_counter() - t)
    out["recall_at_1"] = float(np.mean(found[:, 0] == exact_i[:, 0]))
    out["recall_at_10"] = float(np.mean([len(set(found[i]) & set(exact_i[i])) / 10 for i in range(len(q))]))
    # identity rank-1: the identity the index ranks first against the exact ranking's first
    agree = 0
    for i in range(200):
        ranked = rank_identities(g, q[i], k=1)
        agree += ranked.best.identity == f"id{identity_of(exact_i[i, 0])}"
    out["identity_rank1_agreement"] = agree / 200
    out["sweep"] = sweep(g, q, exact_i)
    g.close()
    memory.stop()
    done = subprocess.run([sys.executable, __file__, "--serving", str(n), str(idx), str(seed)],
                          capture_output=True, text=True, check=True)
    out["serving_peak_mb"] = json.loads(done.stdout.strip().splitlines()[-1])

    extra = make_faces(n, 1000, seed=seed)  # the next 1,000 faces of the same generator
    first_segment = idx / f"seg-{segment.number:06d}.vectors.npy"
    mtime = first_segment.stat().st_mtime_ns
    t = time.perf_counter()
    with open_writer(idx, card=card, model_dir=workdir / "model") as w:
        for j, v in enumerate(extra):
            f = n + j
            w.add_photo(Photo(f"{f}.jpg", f"id{identity_of(np.int64(f))}", 1, 0, str(f), 1, "api"), [(0, None)],
                        v[None])
        w.commit()
    out["add_1000_s"] = time.perf_counter() - t
    out["existing_segment_rewritten"] = first_segment.stat().st_mtime_ns != mtime
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--types", nargs="+", default=["flat", "hnsw", "ivf", "auto"])
    parser.add_argument("--budget", type=int, default=None, help="memory budget in bytes (default: the index's)")
    parser.add_argument("--target-recall", type=float, default=0.99, help="recall@10 that build-time tuning aims for")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("N", "TYPE", "WORKDIR"), help=argparse.SUPPRESS)
    parser.add_argument("--serving", nargs=3, metavar=("N", "INDEX", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serving:
        print(json.dumps(serving_memory(Path(args.serving[1]), int(args.serving[0]), int(args.serving[2]))))
        return
    if args.child:
        n, kind, workdir = int(args.child[0]), args.child[1], Path(args.child[2])
        print(json.dumps(run_one(n, kind, workdir, args.budget, target_recall=args.target_recall)))
        return
    rows = [{"generator": score_check()}]
    print(json.dumps(rows[0]), flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="facesearch-scale-"))
    for n in args.sizes:
        for kind in args.types:
            cmd = [sys.executable, __file__, "--child", str(n), kind, str(workdir)]
            if args.budget:
                cmd += ["--budget", str(args.budget)]
            cmd += ["--target-recall", str(args.target_recall)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else \
                {"faces": n, "type": kind, "error": done.stderr[-2000:]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(workdir / f"idx-{n}-{kind}", ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
