"""Writing a segment's index crash-safely and reading it back memory-mapped, checked against its spec.

What FAISS 1.15 maps with `IO_FLAG_MMAP_IFC` (measured: heap growth right after reading a
500 MB file): flat - the float32 codes (+0 MB); HNSW - the vectors (the graph links are read
into memory: ~8M bytes per vector); IVF - the lists' codes and ids (+1 MB). The older
`IO_FLAG_MMAP` maps only IVF lists (as `OnDiskInvertedLists`) and reads flat and HNSW whole;
it is the fallback where `IO_FLAG_MMAP_IFC` is missing. Mapped pages live in the page cache:
the first queries read them from disk, and the kernel may evict them under memory pressure.
An index read with mmap must never be added to (segments are immutable).
"""

from __future__ import annotations

import os

import faiss

from facesearch.embedder.core.atomic import atomic_path
from facesearch.embedder.core.errors import IndexFormatError
from facesearch.index.storage.ann.build import apply_search_defaults
from facesearch.index.storage.ann.spec import IndexSpec, codes_bytes

_IVF_TYPES = {"flat": "IndexIVFFlat", "sq8": "IndexIVFScalarQuantizer", "pq": "IndexIVFPQ"}


def write_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write `index` to `path` atomically: a temporary file beside it, fsync, `os.replace`.

    An interrupted write leaves `path` as it was (or absent).
    """
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def mmap_flags() -> int:
    """The FAISS read flags that map an index file instead of reading it (see the module doc)."""
    return getattr(faiss, "IO_FLAG_MMAP_IFC", None) or faiss.IO_FLAG_MMAP


def read_index(path: str | os.PathLike, spec: IndexSpec, mmap: bool = True) -> faiss.Index:
    """Read a segment's index and check that it is the index `spec` describes.

    Args:
        path: a file written by `write_index`.
        spec: the segment's spec (from the manifest); its tuned search parameter is set on the
            returned index as its default.
        mmap: map the large arrays from the file instead of copying them into memory.

    Raises:
        IndexFormatError: the file is missing, unreadable, or not of `spec`'s kind, dimension,
            metric or structure.
    """
    path = os.fspath(path)
    flags = (mmap_flags() if mmap else 0)
    if mmap and flags == faiss.IO_FLAG_MMAP and spec.kind != "ivf":
        flags = 0  # the old flag maps only IVF lists
    try:
        index = faiss.read_index(path, flags)
    except RuntimeError as e:
        raise IndexFormatError(f"cannot read the segment index '{path}' ({str(e).strip().splitlines()[0]}): "
                               "the file is missing or damaged; rebuild the index") from e
    problem = _mismatch(index, spec)
    if problem:
        raise IndexFormatError(f"the segment index '{path}' is not the one its manifest describes "
                               f"({spec.factory}, {spec.dim}-d): {problem}; rebuild the index")
    apply_search_defaults(index, spec)
    return index


def _mismatch(index: faiss.Index, spec: IndexSpec) -> str | None:
    if index.d != spec.dim:
        return f"it holds {index.d}-d vectors"
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return "its metric is not the inner product"
    name = type(index).__name__
    if spec.kind == "flat":
        return None if isinstance(index, faiss.IndexFlat) else f"it is a {name}"
    if spec.kind == "hnsw":
        if not isinstance(index, faiss.IndexHNSWFlat):
            return f"it is a {name}, not an IndexHNSWFlat"
        links = index.hnsw.nb_neighbors(0)
        return None if links == 2 * spec.hnsw_m else f"its HNSW has {links // 2} links per node, not {spec.hnsw_m}"
    expected = _IVF_TYPES["pq" if spec.codes.startswith("pq") else spec.codes]
    if name != expected:
        return f"it is a {name}, not an {expected}"
    if index.nlist != spec.nlist:
        return f"it has {index.nlist} lists, not {spec.nlist}"
    if index.code_size != codes_bytes(spec.codes, spec.dim):
        return f"its codes take {index.code_size} bytes, not {codes_bytes(spec.codes, spec.dim)}"
    return None
