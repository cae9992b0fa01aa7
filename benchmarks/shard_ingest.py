"""`build-index --from-embeddings` after a small addition to a large shard folder: by file vs every row.

Writes N synthetic rows (unit vectors, 4 faces per identity, one face per photo) as a shard folder of
files of 50,000 rows, builds a flat index from it, then adds one file of 500 new rows and ingests the folder
again, twice side by side from the same starting index: with the record of the last ingest (unchanged files
decided by size, mtime and rows, issue 23) and from a copy without it (every row read and compared, the
behaviour before). Reports the scan and whole-ingest seconds of each, median of --repeats.

    python benchmarks/shard_ingest.py [--rows 1000000] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _write(folder: Path, card, start: int, n: int, rows_per_file: int, seed: int) -> None:
    from facesearch.embedder.embedding_shards import EmbeddingRows, ShardWriter

    rng = np.random.default_rng(seed)
    with ShardWriter(folder, card, rows_per_file=rows_per_file, build={"faces": "largest", "crops": "dlib-150"},
                     overwrite=True) as w:
        for lo in range(start, start + n, 50_000):
            hi = min(start + n, lo + 50_000)
            vectors = rng.standard_normal((hi - lo, card.embedding_size)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            w.write(EmbeddingRows(path=[f"p{i // 4:07d}/{i:08d}.jpg" for i in range(lo, hi)],
                                  identity=[f"p{i // 4:07d}" for i in range(lo, hi)],
                                  face=np.zeros(hi - lo, np.int32), embedding=vectors, box=[None] * (hi - lo)))


def main() -> None:
    from facesearch.api.models import resolve_model
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.index.storage.manifest import IndexPolicy
    from facesearch.index.sync.ingest import RECORD_FILE, build_index_from_embeddings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="shard-ingest-"))
    model = resolve_model(None)
    card = ModelCard.load(model)
    shards = work / "shards"
    started = time.perf_counter()
    _write(shards, card, 0, args.rows, 50_000, seed=0)
    print(f"{args.rows:,} rows written in {time.perf_counter() - started:.1f} s", flush=True)
    base = work / "base.idx"
    started = time.perf_counter()
    build_index_from_embeddings(shards, base, model_dir=model, policy=IndexPolicy(index_type="flat"))
    print(f"first ingest: {time.perf_counter() - started:.1f} s", flush=True)
    extra = work / "extra"
    _write(extra, card, args.rows, 500, 500, seed=1)
    (extra_file,) = sorted(extra.glob("*.parquet"))
    shutil.copy(extra_file, shards / "zz-extra.parquet")  # sorts after the others; same card
    times = {"by file": [], "every row": []}
    for _ in range(args.repeats):
        for name in times:
            index = work / "run.idx"
            shutil.rmtree(index, ignore_errors=True)
            shutil.copytree(base, index, ignore=shutil.ignore_patterns(".lock", *([RECORD_FILE] if name == "every row" else [])))
            t = time.perf_counter()
            report = build_index_from_embeddings(shards, index, model_dir=model)
            whole = time.perf_counter() - t
            assert report.added == 500 and report.unchanged == args.rows, report  # one face per photo
            times[name].append((report.seconds["scan"], whole, report.shard_files_read))
    print(f"\nadding 500 rows to {args.rows:,} ({len(list(shards.glob('*.parquet')))} files), median of {args.repeats}:")
    for name, runs in times.items():
        scan = statistics.median(r[0] for r in runs)
        whole = statistics.median(r[1] for r in runs)
        print(f"  {name:9s}: scan {scan:6.2f} s, whole ingest {whole:6.2f} s, files read row by row {runs[0][2]}")
    ratio = statistics.median(r[1] for r in times["every row"]) / statistics.median(r[1] for r in times["by file"])
    print(f"  whole ingest, every row / by file: {ratio:.1f}x")


if __name__ == "__main__":
    main()
