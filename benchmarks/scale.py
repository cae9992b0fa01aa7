"""Large galleries: build, load, search, recall and updates of each index type at 100k, 1M and 10M faces.

Two synthetic generators (`--generator`), because how an approximate index behaves depends on how
clustered the faces are:

- `lfw` (the default): matched to the default model's score distributions on
LFW (measured from its vectors: same-person cosine 0.950 +/- 0.018, different-person 0.834 +/- 0.035,
the vectors all lying in a cone whose mean has norm 0.91): each vector is
`normalise(a * m + b * c_identity + e * noise)` with a shared direction `m`, identity offsets `c`
drawn in a low-dimensional subspace (real identities do not spread over all 128 dimensions, which is
what makes different-person scores vary as much as LFW's) and per-photo noise. 5 faces per identity.
- `arcface`: ArcFace-like (margin-trained models such as insightface's): identity centres spread over
  the whole sphere (different people at cosine ~0 +/- 0.09), photos at same-person cosine ~0.74.
  4 faces per identity. A face's 4th-10th neighbours are then strangers in near-uniform noise.

The script prints the scores its own gallery reaches (beside LFW's for `lfw`), so the match is
checked, not assumed.

Each configuration runs in a child process (its peak RSS is its own), through facesearch's own
writer and reader: `IndexWriter` (build, then adding 1,000 faces as a new segment), `GalleryIndex`
(load, search, identity ranking). Exact answers come from numpy brute force over the same vectors.
Recall: face recall@1 / @10 against exact search, and what the verdicts read (the objective the
index is tuned for, `facesearch.index.storage.ann.decisions`): identity agreement (top and runner-up
identity wherever they score at or above the segment's floor, each query searched as itself and as a
stranger with its own identity left out), and floor recall (faces at or above the floor found),
both on the 1,000 queries against exact search over 40 neighbours.
Memory: `peak_rss_mb` is the whole child's peak (the brute force's scratch and every mapped page
included); `build_peak_mb` splits the build's peak into anonymous and file-backed (mapped files the
kernel can drop and read again), and `serving_peak_mb` is a fresh process that opens the index
and answers the 1,000 queries, beside its `baseline` before opening it.

    python benchmarks/scale.py --sizes 100000 1000000 --types flat hnsw ivf --out scale.json
    python benchmarks/scale.py --generator lfw arcface --sizes 100000 --types auto
    python benchmarks/scale.py --sizes 10000000 --types ivf --workdir /big/disk

Queries: 1,000 new photos (new noise) of enrolled identities.
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


FACES_PER_IDENTITY = {"lfw": 5, "arcface": 4}
GENERATORS = tuple(FACES_PER_IDENTITY)
ARCFACE_NOISE = 0.593  # same-person cosine 1 / (1 + 0.593^2) = 0.74 between two photos
DEPTH = 40  # neighbours the decision figures read (the query path's 10 candidates x 4)


def identity_of(face: np.ndarray, generator: str = "lfw") -> np.ndarray:
    """The identity of each face index: identities own consecutive runs of 5 (lfw) or 4 (arcface) faces."""
    return face // FACES_PER_IDENTITY[generator]


def _offsets(identities: np.ndarray, seed: int) -> np.ndarray:
    """Identity offsets `(len, IDENTITY_RANK)`: one generator per block of 65,536 identities, so any
    identity's offset is the same whichever slice of the gallery asks for it."""
    out = np.empty((len(identities), IDENTITY_RANK), np.float32)
    for block in np.unique(identities // 65536):
        values = np.random.default_rng([seed, 1, int(block)]).standard_normal((65536, IDENTITY_RANK)).astype(np.float32)
        here = identities // 65536 == block
        out[here] = values[identities[here] - block * 65536]
    return out


def _centres(identities: np.ndarray, seed: int) -> np.ndarray:
    """ArcFace-like identity centres `(len, D)`, unit rows, per block of 65,536 identities (as `_offsets`)."""
    out = np.empty((len(identities), D), np.float32)
    for block in np.unique(identities // 65536):
        values = np.random.default_rng([seed, 3, int(block)]).standard_normal((65536, D)).astype(np.float32)
        here = identities // 65536 == block
        out[here] = values[identities[here] - block * 65536]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _vectors(identities: np.ndarray, rng: np.random.Generator, seed: int, generator: str = "lfw") -> np.ndarray:
    if generator == "arcface":
        x = _centres(identities, seed) + ARCFACE_NOISE * rng.standard_normal((len(identities), D)).astype(
            np.float32) / np.sqrt(D)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    shared, basis = _subspace(seed)
    noise = rng.standard_normal((len(identities), D)).astype(np.float32)
    # Some photos are worse than others (pose, light, blur): a per-photo noise level.
    level = NOISE * rng.lognormal(0.0, SIGMA, (len(identities), 1)).astype(np.float32)
    x = SHARED * shared + IDENTITY * (_offsets(identities, seed) @ basis) / np.sqrt(IDENTITY_RANK) \
        + level * noise / np.sqrt(D)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_faces(start: int, count: int, *, seed: int = 0, generator: str = "lfw") -> np.ndarray:
    """Faces `start .. start + count` of the synthetic gallery, `(count, D)` float32, rows L2-normalised.

    Deterministic per chunk of CHUNK faces (the benchmark reads the gallery in those chunks).
    """
    out = np.empty((count, D), np.float32)
    for first in range(start, start + count, CHUNK):
        n = min(CHUNK, start + count - first)
        rng = np.random.default_rng([seed, 1, first])
        out[first - start:first - start + n] = _vectors(identity_of(np.arange(first, first + n), generator), rng, seed,
                                                        generator)
    return out


def score_check(seed: int = 0, generator: str = "lfw") -> dict:
    """Same- and different-identity cosines of this generator (to compare with LFW's)."""
    v = make_faces(0, 50_000, seed=seed, generator=generator)
    ids = identity_of(np.arange(50_000), generator)
    per = FACES_PER_IDENTITY[generator]
    rng = np.random.default_rng(3)
    a = rng.integers(0, 50_000, 100_000)
    same = np.einsum("ij,ij->i", v[a[:20_000] // per * per], v[a[:20_000] // per * per + 1])
    b = rng.integers(0, 50_000, 100_000)
    diff = np.einsum("ij,ij->i", v[a], v[b])[ids[a] != ids[b]]
    return {"generator": generator, "same_mean": float(same.mean()), "same_std": float(same.std()),
            "diff_mean": float(diff.mean()),
            "diff_std": float(diff.std()), "lfw": {"same_mean": 0.950, "same_std": 0.018, "diff_mean": 0.834,
                                                   "diff_std": 0.035}}


def queries(n: int, gallery_faces: int, seed: int = 0, generator: str = "lfw") -> tuple[np.ndarray, np.ndarray]:
    """`n` new photos (new noise) of enrolled identities: (vectors, their identities)."""
    faces = np.sort(np.random.default_rng(11).choice(gallery_faces, n, replace=False))
    identities = identity_of(faces, generator)
    return _vectors(identities, np.random.default_rng([seed, 2]), seed, generator), identities


def exact_neighbours(n: int, q: np.ndarray, k: int, seed: int = 0,
                     generator: str = "lfw") -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k face indices and scores over the whole gallery, streamed in chunks."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start in range(0, n, CHUNK):
        x = make_faces(start, min(CHUNK, n - start), seed=seed, generator=generator)
        s = q @ x.T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def decision_figures(found_s: np.ndarray, found_i: np.ndarray, exact_s: np.ndarray, exact_i: np.ndarray,
                     q_ids: np.ndarray, floor: float, generator: str) -> dict:
    """Identity agreement (as tuning measures it, over both views) and floor recall of `(m, DEPTH)` results.

    Ids were given in face order from 0, so a face id is its index and its identity `identity_of(id)`.
    """
    from facesearch.index.storage.ann import decisions

    labels = identity_of(np.arange(max(int(exact_i.max()), int(found_i.max())) + 1), generator)
    shares = [decisions.agreement(decisions.top_two(found_s, found_i, labels, own),
                                  decisions.top_two(exact_s, exact_i, labels, own), floor) for own in (None, q_ids)]
    return {"identity_agreement": float(np.mean([a for a, _ in shares])),
            "strict_agreement": float(np.mean([b for _, b in shares])),
            "floor_recall": decisions.floor_recall(found_s, exact_s, floor), "floor": floor}


def sweep(g, q: np.ndarray, exact_i: np.ndarray, exact_s: np.ndarray, q_ids: np.ndarray, floor: float,
          generator: str) -> list[dict]:
    """p50 latency, recall and decision figures of an approximate segment at search parameters up to its tuned
    one and two doublings past it."""
    seg = g.segments[0]
    if seg.exact:
        return []
    tuned = seg.spec
    rows = []
    top = tuned.ef_search or tuned.nprobe
    # Up to the tuned value, and two doublings past it: where recall@10 over faces would have taken it.
    widest = 4096 if tuned.kind == "hnsw" else tuned.nlist
    values = [16 * 2**i for i in range(20) if 16 * 2**i < top] + [top] + [v for v in (2 * top, 4 * top) if v <= widest]
    if tuned.kind == "hnsw":  # HNSW searches DEPTH neighbours at efSearch >= DEPTH whatever is set
        values = sorted({max(v, DEPTH) for v in values})
    for value in values:
        seg.spec = tuned.with_search(value)
        found_s, found = g.search(q, DEPTH)
        decided = decision_figures(found_s, found, exact_s, exact_i, q_ids, floor, generator)
        lat = []
        for i in range(300):
            t = time.perf_counter()
            g.search(q[i:i + 1], DEPTH)
            lat.append(time.perf_counter() - t)
        rows.append({"search": value, "p50_ms": 1000 * float(np.median(lat)),
                     "recall_at_1": float(np.mean(found[:, 0] == exact_i[:, 0])),
                     "recall_at_10": float(np.mean([len(set(found[i, :10]) & set(exact_i[i, :10])) / 10
                                                    for i in range(len(q))])),
                     "identity_agreement": decided["identity_agreement"], "floor_recall": decided["floor_recall"]})
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


def serving_memory(idx: Path, n: int, seed: int, generator: str = "lfw") -> dict:
    """Open the index in a fresh process, answer 1,000 single queries and one batch: its peak memory (MB).

    `baseline` is the process before it opens the index (Python, numpy, FAISS, facesearch imported).
    """
    from facesearch.index import GalleryIndex

    q, _ = queries(1000, n, seed, generator)
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
            target_recall: float = 0.99, generator: str = "lfw") -> dict:
    """Build an index of `n` faces of type `kind` and measure it (run in a child process)."""
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.index import GalleryIndex, IndexPolicy, open_writer, rank_identities
    from facesearch.index.storage.store import Photo

    card = ModelCard(name="synthetic", input_height=150, input_width=150, embedding_size=D,
                     alignment_template="none")
    (workdir / "model").mkdir(parents=True, exist_ok=True)
    idx = workdir / f"idx-{generator}-{n}-{kind}"
    shutil.rmtree(idx, ignore_errors=True)
    policy = IndexPolicy(index_type=kind, memory_budget=budget, target_recall=target_recall)
    out: dict = {"generator": generator, "faces": n, "type": kind}
    memory = MemoryPeaks()
    t = time.perf_counter()
    with open_writer(idx, card=card, model_dir=workdir / "model", policy=policy) as w:
        for start in range(0, n, CHUNK):
            x = make_faces(start, min(CHUNK, n - start), seed=seed, generator=generator)
            for j, v in enumerate(x):
                f = start + j
                w.add_photo(Photo(f"{f}.jpg", f"id{identity_of(np.int64(f), generator)}", 1, 0, str(f), 1, "api"),
                            [(0, None)], v[None])
        result = w.commit(merge=False)
        segment = w.manifest.segments[-1]
    out["build_s"] = time.perf_counter() - t
    out["build_peak_mb"] = memory.take()
    out["segment"] = {"kind": segment.kind, "spec": segment.spec}
    out["disk_bytes"] = sum(p.stat().st_size for p in idx.iterdir() if p.is_file())
    out["commit_seconds"] = result.seconds

    q, q_ids = queries(1000, n, seed, generator)
    t = time.perf_counter()  # open, and answer a first query (a flat segment builds its index then)
    g = GalleryIndex.open(idx)
    g.search(q[:1], 10)
    out["load_s"] = time.perf_counter() - t
    exact_s, exact_i = exact_neighbours(n, q, DEPTH, seed, generator)
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
    out["batch_ms_per_query"] = 1000 / out["batch_qps"]
    out["recall_at_1"] = float(np.mean(found[:, 0] == exact_i[:, 0]))
    out["recall_at_10"] = float(np.mean([len(set(found[i]) & set(exact_i[i, :10])) / 10 for i in range(len(q))]))
    # The floor the segment was tuned with (flat: estimated the same way, from these exact results).
    floor = segment.spec.get("floor") if segment.spec else None
    if floor is None:
        from facesearch.index.storage.ann import decisions

        floor = decisions.estimate_floor(decisions.stranger_scores(
            exact_s, exact_i, identity_of(np.arange(n), generator), q_ids))[0]
    found_s, found_i = g.search(q, DEPTH)
    out["decisions"] = decision_figures(found_s, found_i, exact_s, exact_i, q_ids, float(floor), generator)
    # identity rank-1: the identity the index ranks first against the exact ranking's first
    agree = 0
    for i in range(200):
        ranked = rank_identities(g, q[i], k=1)
        agree += ranked.best.identity == f"id{identity_of(exact_i[i, 0], generator)}"
    out["identity_rank1_agreement"] = agree / 200
    out["sweep"] = sweep(g, q, exact_i, exact_s, q_ids, float(floor), generator)
    g.close()
    memory.stop()
    done = subprocess.run([sys.executable, __file__, "--serving", str(n), str(idx), str(seed), generator],
                          capture_output=True, text=True, check=True)
    out["serving_peak_mb"] = json.loads(done.stdout.strip().splitlines()[-1])

    extra = make_faces(n, 1000, seed=seed, generator=generator)  # the next 1,000 faces of the same generator
    first_segment = idx / f"seg-{segment.number:06d}.vectors.npy"
    mtime = first_segment.stat().st_mtime_ns
    t = time.perf_counter()
    with open_writer(idx, card=card, model_dir=workdir / "model") as w:
        for j, v in enumerate(extra):
            f = n + j
            w.add_photo(Photo(f"{f}.jpg", f"id{identity_of(np.int64(f), generator)}", 1, 0, str(f), 1, "api"),
                        [(0, None)], v[None])
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
    parser.add_argument("--generator", nargs="+", choices=GENERATORS, default=["lfw"],
                        help="synthetic galleries: LFW-matched (dlib-like) and/or ArcFace-like")
    parser.add_argument("--target-recall", type=float, default=0.99,
                        help="floor recall (and, with the recall objective, recall@10) that build-time tuning aims for")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs=4, metavar=("N", "TYPE", "WORKDIR", "GENERATOR"), help=argparse.SUPPRESS)
    parser.add_argument("--serving", nargs=4, metavar=("N", "INDEX", "SEED", "GENERATOR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serving:
        n, idx, seed, generator = args.serving
        print(json.dumps(serving_memory(Path(idx), int(n), int(seed), generator)))
        return
    if args.child:
        n, kind, workdir, generator = int(args.child[0]), args.child[1], Path(args.child[2]), args.child[3]
        print(json.dumps(run_one(n, kind, workdir, args.budget, target_recall=args.target_recall,
                                 generator=generator)))
        return
    rows = []
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="facesearch-scale-"))
    for generator in args.generator:
        rows.append({"generator": score_check(generator=generator)})
        print(json.dumps(rows[-1]), flush=True)
        for n in args.sizes:
            for kind in args.types:
                cmd = [sys.executable, __file__, "--child", str(n), kind, str(workdir), generator]
                if args.budget:
                    cmd += ["--budget", str(args.budget)]
                cmd += ["--target-recall", str(args.target_recall)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                row = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else \
                    {"generator": generator, "faces": n, "type": kind, "error": done.stderr[-2000:]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(workdir / f"idx-{generator}-{n}-{kind}", ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
