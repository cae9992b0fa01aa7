"""The vector-search core of one segment: choose, build, tune, search (with a deletion filter), save, load.

A segment's vectors are `(n, d)` rows, L2-normalised, float32 or float16 (often a memory-mapped
`.npy`); position i is FAISS id i, and the segment maps positions to global ids itself.

    spec = choose_spec(n, d, default_memory_budget())          # flat | hnsw | ivf (flat/sq8/pq codes)
    index, spec = build_and_tune(vectors, spec, seed=0)        # spec.recall, spec.target_met
    write_index(index, "seg-000001.ann")                       # crash-safe
    index = read_index("seg-000001.ann", spec)                 # memory-mapped
    live = LiveFilter(alive)                                   # once per tombstone set
    scores, positions = search(index, spec, queries, 10, alive=live, raw=vectors)

Nothing here imports TensorFlow (this package is on the query path).
"""

from facesearch.embedder.core.errors import AnnInputError, MemoryBudgetError
from facesearch.index.storage.ann.build import add_positions, build_and_tune, build_segment_index, holdout_sample
from facesearch.index.storage.ann.io import read_index, write_index
from facesearch.index.storage.ann.rules import (
    choose_spec,
    default_memory_budget,
    estimate_memory,
    flat_bytes,
    hnsw_bytes,
    ivf_bytes,
    ivf_nlist,
    train_size,
)
from facesearch.index.storage.ann.searching import LiveFilter, rerank, search
from facesearch.index.storage.ann.spec import SPEC_VERSION, IndexSpec
from facesearch.index.storage.ann.tuning import exact_knn, recall_at, tune

__all__ = [
    "SPEC_VERSION", "AnnInputError", "IndexSpec", "LiveFilter", "MemoryBudgetError", "add_positions",
    "build_and_tune", "build_segment_index", "choose_spec", "default_memory_budget", "estimate_memory",
    "exact_knn", "flat_bytes", "hnsw_bytes", "holdout_sample", "ivf_bytes", "ivf_nlist", "read_index",
    "recall_at", "rerank", "search", "train_size", "tune", "write_index",
]
