"""People clustering: quality on LFW against the usual baselines, and speed and memory at scale.

`lfw`: the vectors of an embedding shard folder of LFW (`facesearch embed ../shared/lfw/images_deepfunneled
--out SHARDS`: largest face per photo, 13,232 faces, 5,749 people), clustered by facesearch at the
parameters it picks itself (`params_for`: the model card's far_1e-3 threshold, the single-face rule
from the collection; LFW's names are never read by it), and on the same vectors, in the same run:

- dlib's `chinese_whispers_clustering` at dlib's own threshold (0.5, `python_examples/face_clustering.py`)
  and at the card's threshold as an L2 distance (`sqrt(2 - 2 t)` on unit vectors);
- scikit-learn's DBSCAN with Immich's rule (`minFaces` 3 = `min_samples` 3, `maxDistance` translated to
  this model: cosine distance `1 - t` at the card's threshold);
- scikit-learn's HDBSCAN (`min_cluster_size` 2: a person of two photos is a group);
- average-linkage agglomerative clustering (scikit-learn, exact, all pairs) at the card's threshold;
- for reference only, Chinese whispers at L2 0.30, the best threshold for these vectors found *with
  LFW's labels* (docs/people.md): no method may tune that way.

Figures: pairwise precision / recall / F (over pairs of faces put together) and BCubed precision /
recall / F (per face, averaged), and the number of groups (2+ faces). An unclustered face is a group
of its own.

`scale`: synthetic faces from benchmarks/scale.py (identity structure matched to the default model's
LFW scores, 5 faces per identity), each size in a child process (its own peak RSS): `cluster` on
n faces, then `assign` of 1,000 new photos of enrolled identities.

    python benchmarks/people.py lfw --shards /work/lfw-shards [--out people_lfw.json]
    python benchmarks/people.py scale --sizes 100000 [1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facesearch.index.people.clustering import assign, cluster, params_for  # noqa: E402


def scores(labels: np.ndarray, truth: np.ndarray) -> dict:
    """Pairwise and BCubed precision / recall / F of `labels` (-1: a group of its own) against `truth`."""
    pred = np.asarray(labels, np.int64).copy()
    alone = pred < 0
    pred[alone] = pred.max(initial=-1) + 1 + np.arange(alone.sum())
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    t, p = t.ravel(), p.ravel()
    _, cell, cell_size = np.unique(p * (t.max() + 1) + t, return_inverse=True, return_counts=True)
    p_size, t_size = np.bincount(p), np.bincount(t)

    def pairs(c: np.ndarray) -> float:
        return float((c.astype(np.float64) * (c - 1) / 2).sum())

    together, predicted, true = pairs(cell_size), pairs(p_size), pairs(t_size)
    pp = together / predicted if predicted else 1.0
    pr = together / true if true else 1.0
    inter = cell_size[cell.ravel()]
    bp, br = float((inter / p_size[p]).mean()), float((inter / t_size[t]).mean())

    def f(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b else 0.0

    return {"pairwise_p": pp, "pairwise_r": pr, "pairwise_f": f(pp, pr), "bcubed_p": bp, "bcubed_r": br,
            "bcubed_f": f(bp, br), "groups": int((p_size >= 2).sum())}


def _load_shards(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    from facesearch.embedder.embedding_shards import load_shards, open_shards

    rows = load_shards(folder)
    card = open_shards(folder).card
    _, photo_ids = np.unique(np.asarray(rows.path), return_inverse=True)  # faces of one photo share an id
    return rows.embedding, photo_ids.astype(np.int64), np.asarray(rows.identity), dict(card.thresholds or {})


def _labels_from(clusters: np.ndarray) -> np.ndarray:
    """Baseline output -> labels: groups of 2+ faces keep a label, the rest -1 (noise stays -1)."""
    c = np.asarray(clusters, np.int64)
    if not (c >= 0).any():
        return np.full(len(c), -1, np.int64)
    sizes = np.bincount(c[c >= 0])
    return np.where((c >= 0) & (sizes[np.maximum(c, 0)] >= 2), c, -1)


def _chinese_whispers(x: np.ndarray, l2: float) -> np.ndarray:
    import dlib

    return np.asarray(dlib.chinese_whispers_clustering([dlib.vector(v.astype(float).tolist()) for v in x], l2))


def baselines(x: np.ndarray, t: float) -> dict:
    """name -> (callable returning cluster ids, a note)."""
    from sklearn.cluster import DBSCAN, HDBSCAN, AgglomerativeClustering

    l2 = float(np.sqrt(2 - 2 * t))
    return {
        "dlib chinese whispers, dlib's 0.5": (lambda: _chinese_whispers(x, 0.5), "L2 0.5"),
        "dlib chinese whispers, card threshold": (lambda: _chinese_whispers(x, l2), f"L2 {l2:.3f}"),
        "DBSCAN, Immich's rule": (lambda: DBSCAN(eps=1 - t, min_samples=3, metric="cosine", algorithm="brute",
                                                  n_jobs=-1).fit_predict(x), f"eps {1 - t:.4f}, min_samples 3"),
        "HDBSCAN": (lambda: HDBSCAN(min_cluster_size=2).fit_predict(x), "min_cluster_size 2"),
        "average linkage (exact)": (lambda: AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                                                    distance_threshold=1 - t).fit_predict(x),
                                    f"distance {1 - t:.4f}"),
        "(label-tuned) chinese whispers, L2 0.30": (lambda: _chinese_whispers(x, 0.30), "best L2 for LFW's labels"),
    }


def run_lfw(args: argparse.Namespace) -> None:
    x, photos, truth, card = _load_shards(args.shards)
    print(f"{len(x)} faces, {len(np.unique(photos))} photos, {len(np.unique(truth))} people; card {card}",
          file=sys.stderr)
    rows = []
    t0 = time.perf_counter()
    params = params_for(card, x)
    labels = cluster(x, photos, params)
    rows.append({"method": "facesearch", "setting": f"t {params.threshold:.4f}, single {params.single:.4f}, "
                 f"gap {params.gap:.4f}, k {params.k}", "seconds": time.perf_counter() - t0, **scores(labels, truth)})
    print(rows[-1], file=sys.stderr)
    # Incremental: 1,000 seeded faces assigned to a grouping of the others, by the same parameters.
    new = np.zeros(len(x), bool)
    new[np.random.default_rng(0).choice(len(x), min(1000, len(x) // 2), replace=False)] = True
    old = cluster(x[~new], photos[~new], params)
    t0 = time.perf_counter()
    combined = np.empty(len(x), np.int64)
    combined[~new], combined[new] = old, assign(x[new], photos[new], x[~new], photos[~new], old, params)
    rows.append({"method": "facesearch, incremental", "setting": f"{int(new.sum())} faces assigned to a grouping of "
                 "the rest", "seconds": time.perf_counter() - t0, **scores(combined, truth)})
    print(rows[-1], file=sys.stderr)
    skip = set(args.skip or [])
    for name, (fit, note) in baselines(x, params.threshold).items():
        if any(s in name for s in skip):
            continue
        t0 = time.perf_counter()
        out = _labels_from(fit())
        rows.append({"method": name, "setting": note, "seconds": time.perf_counter() - t0, **scores(out, truth)})
        print(rows[-1], file=sys.stderr)
    print("| method | setting | pairwise P / R / F | BCubed P / R / F | groups | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['setting']} | {r['pairwise_p']:.3f} / {r['pairwise_r']:.3f} / "
              f"**{r['pairwise_f']:.3f}** | {r['bcubed_p']:.3f} / {r['bcubed_r']:.3f} / **{r['bcubed_f']:.3f}** | "
              f"{r['groups']} | {r['seconds']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"faces": len(x), "people": int(len(np.unique(truth))), "card": card,
                                              "rows": rows}, indent=2))


def scale_one(n: int, threads: int, seed: int = 0) -> dict:
    """One size: cluster n synthetic faces, then assign 1,000 new ones (run in a child process)."""
    import faiss
    import scale as synthetic  # benchmarks/scale.py

    faiss.omp_set_num_threads(threads)
    x = synthetic.make_faces(0, n, seed=seed)
    truth = synthetic.identity_of(np.arange(n))
    photos = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    params = params_for({"best_accuracy": 0.903, "far_1e-3": 0.9262}, x, seed=seed)  # the default model's card
    t_params = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    labels = cluster(x, photos, params)
    t_cluster, c_cluster = time.perf_counter() - t0, time.process_time() - c0
    q, q_truth = synthetic.queries(1000, n, seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    new = assign(q, np.arange(n, n + 1000, dtype=np.int64), x, photos, labels, params)
    t_assign, c_assign = time.perf_counter() - t0, time.process_time() - c0
    # How often a new face joined the group holding most of its identity's faces.
    right = 0
    per = synthetic.FACES_PER_IDENTITY["lfw"]
    for face, who in zip(new, q_truth):
        held = labels[who * per:(who + 1) * per]
        held = held[held >= 0]
        right += bool(len(held)) and face == np.bincount(held).argmax()
    return {"n": n, "threads": threads, "params": {"threshold": params.threshold, "single": params.single,
                                                   "gap": params.gap}, "params_s": t_params,
            "cluster_s": t_cluster, "assign_1000_s": t_assign,
            # CPU seconds of every thread: what a loaded machine cannot inflate (wall >= cpu / threads)
            "cluster_cpu_s": c_cluster, "assign_1000_cpu_s": c_assign, "assign_joined_right": right / 1000,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **scores(labels, truth)}


def run_scale(args: argparse.Namespace) -> None:
    out = []
    for n in args.sizes:
        child = subprocess.run([sys.executable, __file__, "scale-one", str(n), "--threads", str(args.threads)],
                               capture_output=True, text=True, check=True)
        out.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(out[-1]))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lfw = sub.add_parser("lfw", help="quality on LFW vs the baselines")
    lfw.add_argument("--shards", type=Path, required=True, help="embedding shard folder of LFW (facesearch embed)")
    lfw.add_argument("--skip", nargs="*", help="leave out baselines whose name contains one of these")
    lfw.add_argument("--out", help="write the figures as JSON here")
    sc = sub.add_parser("scale", help="cluster and assign on synthetic faces")
    sc.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    sc.add_argument("--threads", type=int, default=2)
    sc.add_argument("--out")
    one = sub.add_parser("scale-one")
    one.add_argument("n", type=int)
    one.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.command == "lfw":
        run_lfw(args)
    elif args.command == "scale":
        run_scale(args)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        print(json.dumps(scale_one(args.n, args.threads)))


if __name__ == "__main__":
    main()
