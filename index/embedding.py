"""Read photos in worker threads and embed their faces in batches, in a stable order.

Reader -> mapper split (as in clip-retrieval): a thread pool checksums and decodes the next batch
of photos (Pillow and hashlib release the GIL) while the calling thread embeds the current one,
so at most two batches of decoded faces are in memory at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedder.errors import ImageReadError, ModelSpecError
from embedder.model_card import sha256_file
from index.protocols import EmbedderLike, FaceCropLike
from index.scan import ScannedFile
from index.store import Box

FACE_POLICIES = ("largest", "all")  # which faces of a photo are stored


@dataclass
class PhotoFaces:
    """What reading and embedding one photo gave.

    Exactly one of: `error` set (unreadable, nothing else valid); `reuse` set (its content equals
    a photo already indexed, whose vectors can be kept, so it was not decoded); or `vectors`
    holding one row per kept face (none if `n_faces == 0`).
    """

    file: ScannedFile
    sha256: str = ""
    n_faces: int = 0  # faces found in the photo
    kept: list[tuple[int, Box | None]] = field(default_factory=list)  # (position, box) per kept face
    vectors: np.ndarray | None = None  # (len(kept), d) float32, rows L2-normalised
    reuse: bool = False
    error: ImageReadError | None = None


def select_faces(crops: Sequence[FaceCropLike], policy: str) -> list[int]:
    """Positions of the faces to store: all of them, or the one with the largest box."""
    if policy == "all" or len(crops) <= 1:
        return list(range(len(crops)))
    areas = [0.0 if c.box is None else (c.box[2] - c.box[0]) * (c.box[3] - c.box[1]) for c in crops]
    return [int(np.argmax(areas))]  # first of equals: stable


def _read(embedder: EmbedderLike, root: Path, f: ScannedFile,
          reusable: frozenset[str]) -> tuple[str, list[FaceCropLike] | None]:
    path = root / f.path
    try:
        sha = sha256_file(path)
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e)) from e
    if sha in reusable:
        return sha, None
    return sha, list(embedder.faces(path))


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


def embed_photos(files: Sequence[ScannedFile], root: Path, embedder: EmbedderLike, *, batch_size: int,
                 policy: str, reusable: frozenset[str] = frozenset(), workers: int | None = None,
                 on_batch: Callable[[int], None] | None = None) -> Iterator[list[PhotoFaces]]:
    """Yield one list of `PhotoFaces` per batch of `batch_size` photos, in `files` order.

    Unreadable photos come back with `error` set (the caller decides whether that is fatal);
    photos whose checksum is in `reusable` are not decoded. `on_batch(n)` is called after each
    batch with the number of photos it held.
    """
    if policy not in FACE_POLICIES:
        raise ValueError(f"face policy must be one of {FACE_POLICIES}, got {policy!r}")
    card = embedder.card
    workers = workers or min(4, os.cpu_count() or 1)
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facesearch-read") as pool:
        def submit(batch: Sequence[ScannedFile]) -> list[Future]:
            return [pool.submit(_read, embedder, root, f, reusable) for f in batch]

        try:
            pending = submit(batches[0]) if batches else []
            for b, batch in enumerate(batches):
                current, pending = pending, (submit(batches[b + 1]) if b + 1 < len(batches) else [])
                results, crops = [], []
                for f, fut in zip(batch, current):
                    try:
                        sha, found = fut.result()
                    except ImageReadError as e:
                        results.append(PhotoFaces(f, error=e))
                        continue
                    if found is None:
                        results.append(PhotoFaces(f, sha256=sha, reuse=True))
                        continue
                    keep = select_faces(found, policy)
                    results.append(PhotoFaces(f, sha256=sha, n_faces=len(found),
                                              kept=[(i, _as_box(found[i].box)) for i in keep]))
                    crops.extend(found[i].image for i in keep)
                _attach_vectors(results, crops, embedder, batch_size, card.embedding_size, card.name)
                if on_batch is not None:
                    on_batch(len(batch))
                yield results
        finally:
            for fut in pending:
                fut.cancel()


def _attach_vectors(results: list[PhotoFaces], crops: list[np.ndarray], embedder: EmbedderLike,
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
