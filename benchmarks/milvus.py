"""Milvus Lite beside the folder index on the same synthetic gallery: build, add, remove, query, recall, memory.

    python benchmarks/milvus.py --faces 100000 [--index-type hnsw] [--out milvus.json]

N faces of N/4 identities (seeded: identity centres plus noise, L2-normalised, 128-d) go into an
embedding shard folder once; then each store runs in a process of its own (so that its peak RSS is its
own): the folder index (`build_index_from_embeddings`) and a Milvus Lite gallery in that process
(`milvus-lite:PATH.db`, `facesearch.index.milvus.build.build_from_embeddings`). Each measures:

- build: the whole `build-index --from-embeddings`, open-set calibration included (both calibrate the
  same way, through their own search);
- add 1,000 faces (new identities) in one commit, then remove those 1,000 in one commit;
- single queries: p50 / p99 of one `FaceSearcher.answer_vectors` call (identity ranking + verdict) on one
  vector, over `--queries` held-out faces of enrolled people; batch throughput: the same faces in one call;
- recall@1 against exact search (numpy over the live vectors: the stored face that is truly nearest) and
  identity agreement (the answer's top identity is the exact nearest face's identity);
- peak RSS of the process.

Milvus Lite builds its vector index in a background thread after a flush and scans every vector until
then; before querying, this script waits for that thread (a Lite internal, `Collection._wait_for_bg`),
so the figures are those of the built index. Set OMP_WAIT_POLICY=PASSIVE on a shared machine (done here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

DIM = 128
PER_IDENTITY = 4
SPREAD = 0.6  # noise per coordinate relative to a unit centre: same-person scores about 0.7, strangers about 0
CHANGES = 1_000


def make_gallery(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(paths, identities, vectors (n, d), query vectors (q, d), query identities' codes): seeded."""
    rng = np.random.default_rng(seed)
    ids = n // PER_IDENTITY
    centres = rng.standard_normal((ids, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((ids * PER_IDENTITY, DIM)).astype(np.float32) * (SPREAD / np.sqrt(DIM))
    v = np.repeat(centres, PER_IDENTITY, axis=0) + noise
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    who = [f"p{i:07d}" for i in range(ids)]
    paths = [f"{who[i]}/{j}.jpg" for i in range(ids) for j in range(PER_IDENTITY)]
    return paths, [p.split("/")[0] for p in paths], v, centres, rng


def write_shards(folder: Path, paths, identities, v) -> None:
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.embedder.embedding_shards import EmbeddingRows
    from facesearch.embedder.embedding_shards.writer import ShardWriter

    card = ModelCard(name="synthetic-128", input_height=8, input_width=8, embedding_size=DIM,
                     alignment_template="none")
    sha = [hashlib.sha256(p.encode()).hexdigest() for p in paths]  # stands for each photo's bytes
    with ShardWriter(folder, card, rows_per_file=200_000) as w:
        for lo in range(0, len(paths), 50_000):
            hi = lo + 50_000
            w.write(EmbeddingRows(paths[lo:hi], identities[lo:hi], np.zeros(len(paths[lo:hi]), np.int32), v[lo:hi],
                                  [None] * len(paths[lo:hi]), sha256=sha[lo:hi]))


def queries(n: int, seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out faces of enrolled people: (vectors (count, d), their identity numbers)."""
    _, _, _, centres, rng = make_gallery(n, seed)
    who = rng.choice(len(centres), count, replace=False)
    q = centres[who] + rng.standard_normal((count, DIM)).astype(np.float32) * (SPREAD / np.sqrt(DIM))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), who


# --- one store, in its own process -------------------------------------------------------------------------

class Folder:
    name = "folder index"

    def __init__(self, work: Path, index_type: str):
        self.index, self.index_type = work / "gallery.idx", index_type

    def build(self, shards: Path):
        from facesearch.index.storage.manifest import IndexPolicy
        from facesearch.index.sync.ingest import build_index_from_embeddings

        return build_index_from_embeddings(shards, self.index, policy=IndexPolicy(index_type=self.index_type))

    def _writer(self):
        from facesearch.index import open_writer, read_manifest

        m = read_manifest(self.index)
        return open_writer(self.index, card=m.model_card, model_dir=m.model_dir)

    def add(self, photos):
        with self._writer() as w:
            for photo, faces, vectors in photos:
                w.add_photo(photo, faces, vectors)
            w.commit()

    def remove(self, paths):
        with self._writer() as w:
            w.remove_photos(paths)
            w.commit()

    def open(self):
        from facesearch.index import GalleryIndex

        return GalleryIndex.open(self.index)

    def settle(self) -> None:
        pass


class Lite:
    name = "Milvus Lite"

    def __init__(self, work: Path, index_type: str):
        from facesearch.index.milvus.address import parse_address

        self.address = parse_address(f"milvus-lite:{work / 'gallery.db'}#faces")
        self.index_type = index_type

    def build(self, shards: Path):
        from facesearch.index.milvus.build import build_from_embeddings

        return build_from_embeddings(shards, self.address, None, index_type=self.index_type)

    def _write(self, stage):
        from facesearch.index.milvus.build import commit_write
        from facesearch.index.milvus.engine import connect, disconnect
        from facesearch.index.milvus.writer import open_milvus_writer

        client = connect(self.address, None)
        w = open_milvus_writer(client, self.address)
        try:
            stage(w)
            commit_write(w)
        finally:
            w.release()
            disconnect(client, self.address)

    def add(self, photos):
        self._write(lambda w: w.add_photos(photos))

    def remove(self, paths):
        self._write(lambda w: w.remove_paths(paths))

    def open(self):
        from facesearch.index.milvus.gallery import MilvusIndex

        return MilvusIndex.open(self.address)

    def settle(self) -> None:
        """Wait for Lite's background index build (see the module docstring)."""
        from milvus_lite.server_manager import server_manager_instance

        entry = server_manager_instance._servers.get(self.address.uri)
        if entry is None:
            return
        for collection in list(entry[1]._collections.values()):
            collection._wait_for_bg()


def run_store(kind: str, work: Path, shards: Path, n: int, seed: int, count: int, index_type: str) -> dict:
    from facesearch.index.query import FaceSearcher
    from facesearch.index.storage.store import Photo

    store = (Folder if kind == "folder" else Lite)(work, index_type)
    out: dict = {"store": store.name}
    t = time.perf_counter()
    report = store.build(shards)
    out["build_s"] = time.perf_counter() - t
    out["calibration"] = report.calibration["action"] if report.calibration else None
    rng = np.random.default_rng(seed + 1)
    new = rng.standard_normal((CHANGES, DIM)).astype(np.float32)
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    photos = [(Photo(f"new{i:05d}/0.jpg", f"new{i:05d}", 1, 1, f"{i:064x}", 1), [(0, None)], new[i:i + 1])
              for i in range(CHANGES)]
    t = time.perf_counter()
    store.add(photos)
    out["add_1000_s"] = time.perf_counter() - t
    t = time.perf_counter()
    store.remove([p.path for p, _, _ in photos])
    out["remove_1000_s"] = time.perf_counter() - t
    store.settle()

    q, who = queries(n, seed, count)
    paths, _, v, _, _ = make_gallery(n, seed)
    exact = np.argmax(q @ v.T, axis=1)  # the stored face truly nearest to each query
    with store.open() as g:
        searcher = FaceSearcher(g, card=g.card)
        searcher.answer_vectors(q[:5], k=5)  # warm
        single = []
        answers = []
        for row in q:
            t = time.perf_counter()
            answers.append(searcher.answer_vectors(row[None], k=5)[0])
            single.append(time.perf_counter() - t)
        t = time.perf_counter()
        searcher.answer_vectors(q, k=5)
        batch_s = time.perf_counter() - t
        _, ids = g.search(q, 1)
        top_paths = [r.path for r in g.records(ids[:, 0])]
        out |= {"faces": len(g), "index_type": _kind(g)}
    out["query_p50_ms"] = float(np.percentile(single, 50) * 1000)
    out["query_p99_ms"] = float(np.percentile(single, 99) * 1000)
    out["batch_queries_per_s"] = count / batch_s
    out["recall_at_1"] = float(np.mean([p == paths[j] for p, j in zip(top_paths, exact)]))
    out["identity_agreement"] = float(np.mean([a["matches"][0]["identity"] == paths[j].split("/")[0]
                                               for a, j in zip(answers, exact)]))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _kind(g) -> str:
    if hasattr(g, "segments"):
        return ",".join(sorted({s.info.kind for s in g.segments}))
    return g.manifest.index.index_type


# --- the run -----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--index-type", default="hnsw", help="both stores: flat, hnsw or ivf (Milvus: FLAT, HNSW, IVF_FLAT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--store", choices=["folder", "lite"], help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    if args.store is not None:
        print(json.dumps(run_store(args.store, args.workdir, args.workdir.parent / "shards", args.faces, args.seed,
                                   args.queries, args.index_type)))
        return
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        paths, identities, v, _, _ = make_gallery(args.faces, args.seed)
        write_shards(work / "shards", paths, identities, v)
        print(f"{args.faces} faces of {args.faces // PER_IDENTITY} identities written as shards in "
              f"{time.perf_counter() - t:.1f} s; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        del v
        rows = []
        for store in ("folder", "lite"):
            (work / store).mkdir()
            r = subprocess.run([sys.executable, __file__, "--store", store, "--workdir", str(work / store),
                                "--faces", str(args.faces), "--queries", str(args.queries), "--seed", str(args.seed),
                                "--index-type", args.index_type], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{store} run failed:\n{r.stderr[-4000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows, args))
    if args.out is not None:
        args.out.write_text(json.dumps({"faces": args.faces, "queries": args.queries, "index_type": args.index_type,
                                        "seed": args.seed, "load": os.getloadavg()[0], "rows": rows}, indent=2))


def table(rows: list[dict], args) -> str:
    head = ("| store | index | build (s) | add 1,000 (s) | remove 1,000 (s) | query p50 / p99 (ms) | batch (queries/s) "
            "| recall@1 | identity agreement | peak RSS (MiB) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['store']} | {r['index_type']} | {r['build_s']:.1f} | {r['add_1000_s']:.2f} | "
                     f"{r['remove_1000_s']:.2f} | {r['query_p50_ms']:.2f} / {r['query_p99_ms']:.2f} | "
                     f"{r['batch_queries_per_s']:.0f} | {r['recall_at_1']:.3f} | {r['identity_agreement']:.3f} | "
                     f"{r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
