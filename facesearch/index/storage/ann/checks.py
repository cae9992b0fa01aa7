"""Checks of what enters `facesearch.index.storage.ann`: integers, vector arrays (read chunk by chunk), queries."""

from __future__ import annotations

import operator

import numpy as np

from facesearch.embedder.core.errors import AnnInputError

# |norm - 1| allowed for a stored row: float16 storage alone moves a unit norm by ~5e-4.
NORM_TOLERANCE = 1e-2
CHUNK_ROWS = 1 << 16  # rows converted to float32 at a time (32 MiB at 128-d)


def positive_int(name: str, value, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, or AnnInputError naming `name`."""
    try:
        if isinstance(value, bool):
            raise TypeError
        as_int = operator.index(value)
    except TypeError:
        raise AnnInputError(f"{name} must be an integer, got {value!r}") from None
    if as_int < minimum:
        raise AnnInputError(f"{name} must be >= {minimum}, got {as_int}")
    return as_int


def check_vectors(vectors, d: int | None = None, name: str = "vectors") -> tuple[int, int]:
    """Check the shape and dtype of `(n, d)` stored vectors without reading them; return (n, d).

    Accepts numpy arrays and `np.memmap`s (e.g. `np.load(path, mmap_mode="r")`) of float16,
    float32 or float64. Values are checked as they are read (`float32_rows`).
    """
    if not isinstance(vectors, np.ndarray):
        raise AnnInputError(f"{name} must be a numpy array (or memmap), got {type(vectors).__name__}")
    if vectors.ndim != 2 or vectors.shape[0] < 1 or vectors.shape[1] < 1:
        raise AnnInputError(f"{name} must be a non-empty (n, d) array, got shape {vectors.shape}")
    if vectors.dtype not in (np.float16, np.float32, np.float64):
        raise AnnInputError(f"{name} must be float16, float32 or float64, got {vectors.dtype}")
    if d is not None and vectors.shape[1] != d:
        raise AnnInputError(f"{name} are {vectors.shape[1]}-d, the index spec says {d}-d: "
                            "build with a spec chosen for these vectors")
    return int(vectors.shape[0]), int(vectors.shape[1])


def float32_rows(vectors: np.ndarray, rows: slice | np.ndarray, name: str = "vectors") -> np.ndarray:
    """Rows of stored vectors as a C-contiguous float32 array, checked finite and L2-normalised.

    Raises:
        AnnInputError: naming the first bad row (its position in `vectors`).
    """
    x = np.ascontiguousarray(vectors[rows], dtype=np.float32)

    def position(i: int) -> int:  # the row's position in `vectors`, for the message
        return int(rows.start or 0) + i if isinstance(rows, slice) else int(rows[i])

    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = position(int(np.flatnonzero(~finite)[0]))
        raise AnnInputError(f"{name} row {bad} holds NaN or infinity: drop it or embed its photo again")
    norms = np.linalg.norm(x, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise AnnInputError(f"{name} row {position(i)} has L2 norm {norms[i]:.4g}, expected 1 "
                            f"(+-{NORM_TOLERANCE}): rows must be L2-normalised (x / ||x||) before indexing")
    return x


def check_queries(queries, d: int) -> np.ndarray:
    """Queries as C-contiguous `(m, d)` float32, checked finite.

    Raises:
        AnnInputError: not a 2-d float array of width d, or NaN/infinity in it.
    """
    if not isinstance(queries, np.ndarray):
        raise AnnInputError(f"queries must be a numpy array, got {type(queries).__name__}")
    if queries.ndim != 2 or queries.shape[1] != d:
        raise AnnInputError(f"queries must have shape (m, {d}), got {queries.shape}"
                            + (": pass one query as x[None, :]" if queries.shape == (d,) else ""))
    if queries.dtype not in (np.float16, np.float32, np.float64):
        raise AnnInputError(f"queries must be float16, float32 or float64, got {queries.dtype}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if not np.isfinite(q).all():
        raise AnnInputError("queries hold NaN or infinity")
    return q


def check_positions(positions, n: int, name: str) -> np.ndarray:
    """Distinct positions in [0, n) as a sorted int64 array."""
    p = np.asarray(positions)
    if p.ndim != 1 or (p.size and not np.issubdtype(p.dtype, np.integer)):
        raise AnnInputError(f"{name} must be a 1-d array of integer positions, got {p.dtype} {p.shape}")
    p = np.sort(p.astype(np.int64))
    if p.size and (p[0] < 0 or p[-1] >= n):
        raise AnnInputError(f"{name} must lie in [0, {n}), got values from {p[0]} to {p[-1]}")
    if p.size > 1 and not (np.diff(p) > 0).all():
        raise AnnInputError(f"{name} must not repeat a position")
    return p


def insertion_order(n: int, excluded: np.ndarray) -> np.ndarray:
    """Positions of the rows an index built with `exclude=excluded` holds, in insertion order."""
    return np.setdiff1d(np.arange(n, dtype=np.int64), excluded, assume_unique=True)
