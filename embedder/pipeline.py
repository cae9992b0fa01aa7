"""Photos -> faces -> vectors, in batches: the one loop that build-index, eval and the demo share.

Reader -> mapper split (as in clip-retrieval): a thread pool checksums and decodes the next batch
of photos (Pillow and hashlib release the GIL) while the calling thread embeds the current one,
so at most two batches of decoded faces are in memory at once. Results come back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from embedder.core.constants import Box, reader_threads
from embedder.core.errors import ImageReadError, ModelSpecError
from embedder.core.model_card import ModelCard, sha256_file

FACE_POLICIES = ("largest", "all")  # which faces of a photo are kept


class FaceCropLike(Protocol):
    """One face ready for the model, as `embedder.runtime.FaceCrop` provides it."""

    image: np.ndarray  # (H, W, 3) uint8 RGB at the model's input size
    box: Box | None  # x1, y1, x2, y2 in the photo; None if pre-aligned


class FaceSource(Protocol):
    """What the loop needs of an embedder (`embedder.runtime.Embedder` is one).

    `faces` is called from worker threads; `embed` only from the thread that iterates.
    """

    card: ModelCard

    def faces(self, path: str | os.PathLike) -> Sequence[FaceCropLike]:
        """Face crops found in one photo (0..n); raises `ImageReadError` if it cannot be read."""
        ...

    def embed(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """`(n, d)` float32 embeddings of `crops`, rows L2-normalised, in input order."""
        ...


@dataclass
class PhotoFaces:
    """What reading and embedding one photo gave.

    Exactly one of: `error` set (unreadable, nothing else valid); `reuse` set (its content equals
    a photo the caller already has vectors for, so it was not decoded); or `vectors` holding one
    row per kept face (none if `n_faces == 0`).
    """

    position: int  # index of the photo in the input sequence
    path: Path
    sha256: str = ""
    n_faces: int = 0  # faces found in the photo
    kept: list[tuple[int, Box | None]] = field(default_factory=list)  # (position among faces, box) per kept face
    vectors: np.ndarray | None = None  # (len(kept), d) float32, rows L2-normalised
    reuse: bool = False
    error: ImageReadError | None = None


def select_faces(crops: Sequence[FaceCropLike], policy: str) -> list[int]:
    """Positions of the faces to keep: all of them, or the one with the largest box."""
    if policy == "all" or len(crops) <= 1:
        return list(range(len(crops)))
    areas = [0.0 if c.box is None else (c.box[2] - c.box[0]) * (c.box[3] - c.box[1]) for c in crops]
    return [int(np.argmax(areas))]  # first of equals: stable


def check_embeddings(v: np.ndarray, n: int, d: int, card_name: str) -> np.ndarray:
    """`v` as `(n, d)` C-contiguous float32 after checking it is what the embedder promises.

    Raises:
        ModelSpecError: wrong type, shape, non-finite values or rows not L2-normalised.
    """
    if not isinstance(v, np.ndarray) or v.shape != (n, d):
        got = v.shape if isinstance(v, np.ndarray) else type(v).__name__
        raise ModelSpecError(f"model '{card_name}' returned embeddings of shape {got}, expected ({n}, {d})")
    v = np.ascontiguousarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1)
    if not np.all(np.isfinite(v)) or not np.allclose(norms, 1.0, atol=1e-3):
        raise ModelSpecError(f"model '{card_name}' returned embeddings that are not finite L2-normalised rows "
                             f"(norms {norms.min():.4g}..{norms.max():.4g}); the index needs unit vectors")
    return v


def embed_photos(paths: Sequence[str | os.PathLike], embedder: FaceSource, *, batch_size: int, policy: str,
                 reusable: frozenset[str] = frozenset(), workers: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> Iterator[list[PhotoFaces]]:
    """Yield one list of `PhotoFaces` per batch of `batch_size` photos, in `paths` order.

    Args:
        paths: the photos.
        embedder: finds and embeds faces (`FaceSource`).
        batch_size: photos per batch (and crops per model call).
        policy: "largest" keeps the largest face of each photo, "all" keeps every face.
        reusable: sha256 digests of photos the caller already holds vectors for: such photos
            come back with `reuse` set, not decoded.
        workers: threads reading photos; default `embedder.core.constants.reader_threads()`.
        on_batch: called after each batch with the number of photos it held.

    Unreadable photos come back with `error` set; the caller decides whether that is fatal.
    """
    if policy not in FACE_POLICIES:
        raise ValueError(f"face policy must be one of {FACE_POLICIES}, got {policy!r}")
    card = embedder.card
    paths = [Path(p) for p in paths]
    batches = [range(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=workers or reader_threads(), thread_name_prefix="facesearch-read") as pool:
        def submit(batch: range) -> list[Future]:
            return [pool.submit(_read, embedder, paths[i], reusable) for i in batch]

        pending: list[Future] = []
        try:
            pending = submit(batches[0]) if batches else []
            for b, batch in enumerate(batches):
                current, pending = pending, (submit(batches[b + 1]) if b + 1 < len(batches) else [])
                results, crops = [], []
                for i, fut in zip(batch, current):
                    try:
                        sha, found = fut.result()
                    except ImageReadError as e:
                        results.append(PhotoFaces(i, paths[i], error=e))
                        continue
                    if found is None:
                        results.append(PhotoFaces(i, paths[i], sha256=sha, reuse=True))
                        continue
                    keep = select_faces(found, policy)
                    results.append(PhotoFaces(i, paths[i], sha256=sha, n_faces=len(found),
                                              kept=[(k, _as_box(found[k].box)) for k in keep]))
                    crops.extend(found[k].image for k in keep)
                _attach_vectors(results, crops, embedder, batch_size, card.embedding_size, card.name)
                if on_batch is not None:
                    on_batch(len(batch))
                yield results
        finally:
            for fut in pending:
                fut.cancel()


def _read(embedder: FaceSource, path: Path, reusable: frozenset[str]) -> tuple[str, list[FaceCropLike] | None]:
    try:
        sha = sha256_file(path)
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e)) from e
    if sha in reusable:
        return sha, None
    return sha, list(embedder.faces(path))


def _attach_vectors(results: list[PhotoFaces], crops: list[np.ndarray], embedder: FaceSource,
                    batch_size: int, d: int, card_name: str) -> None:
    vectors = np.empty((0, d), np.float32)
    if crops:
        vectors = check_embeddings(embedder.embed(crops, batch_size=batch_size), len(crops), d, card_name)
    start = 0
    for r in results:
        if r.error is None and not r.reuse:
            r.vectors = vectors[start:start + len(r.kept)]
            start += len(r.kept)


def _as_box(box) -> Box | None:
    return None if box is None else tuple(float(x) for x in box)


@dataclass
class LargestFaces:
    """The largest face's vector of each photo. `vectors[i]` is valid only where `ok[i]`."""

    vectors: np.ndarray  # (n, d) float32, rows L2-normalised where ok, zeros elsewhere
    ok: np.ndarray  # (n,) bool
    failures: list[tuple[str, str]]  # (path, reason) of each photo that gave no face vector
    seconds: float


def embed_largest_faces(paths: Sequence[str | os.PathLike], embedder: FaceSource, *, batch_size: int,
                        workers: int | None = None, progress: Callable[[str, int, int], None] | None = None,
                        phase: str = "embed") -> LargestFaces:
    """Embed the largest face of each photo (`embed_photos` with the "largest" policy).

    A photo that cannot be read or shows no face is a failure: listed with its reason, never fatal.

    Args:
        paths: the photos.
        embedder: finds and embeds faces.
        batch_size: photos per batch.
        workers: threads reading photos.
        progress: called as `progress(phase, done, total)`.
        phase: the phase name given to `progress`.

    Returns:
        A `LargestFaces`, in the order of `paths`.
    """
    import time

    start = time.perf_counter()
    n = len(paths)
    out = LargestFaces(np.zeros((n, embedder.card.embedding_size), np.float32), np.zeros(n, bool), [], 0.0)
    done = 0
    if progress:
        progress(phase, 0, n)
    for batch in embed_photos(paths, embedder, batch_size=batch_size, policy="largest", workers=workers):
        for r in batch:
            if r.error is not None:
                out.failures.append((str(r.path), r.error.reason))
            elif not r.kept:
                out.failures.append((str(r.path), "no face found"))
            else:
                out.vectors[r.position] = r.vectors[0]
                out.ok[r.position] = True
        done += len(batch)
        if progress:
            progress(phase, done, n)
    out.seconds = time.perf_counter() - start
    return out
