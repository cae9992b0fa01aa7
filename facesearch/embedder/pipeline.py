"""Photos -> faces -> vectors, in batches: the one loop that build-index, eval and the demo share.

Reader -> mapper split (as in clip-retrieval). Photos go in chunks of `batch_size` to worker
processes (`facesearch.embedder.workers`): each reads a file once (its sha256 and its decode come from the
same bytes), finds and aligns the faces of the whole chunk (R-Net and O-Net run once per chunk) and
embeds them in one model call; a bounded window of chunks in flight keeps memory flat whatever the
number of photos, and the chunks come back in input order. An embedder that cannot be sent to
another process (nothing to rebuild it from) runs in this process instead: threads read photos
while the calling thread embeds, as before. Unreadable photos, and photos that crash a worker,
come back as errors, never as exceptions.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Protocol

import numpy as np

from facesearch.embedder.core.constants import Box, reader_threads
from facesearch.embedder.core.errors import ImageReadError, ModelSpecError
from facesearch.embedder.core.model_card import ModelCard, sha256_file
from facesearch.embedder.workers import WorkerCrashedError, WorkerPool, available_cores

FACE_POLICIES = ("largest", "all")  # which faces of a photo are kept
WINDOW_PER_WORKER = 3  # chunks in flight per worker: enough that none waits for the next one
# A worker process costs ~1 s to start (imports, models): below this many photos each, the calling
# process does the work sooner by itself.
MIN_PHOTOS_PER_PROCESS = 64


class FaceCropLike(Protocol):
    """One face ready for the model, as `facesearch.embedder.runtime.FaceCrop` provides it."""

    image: np.ndarray  # (H, W, 3) uint8 RGB at the model's input size
    box: Box | None  # x1, y1, x2, y2 in the photo; None if pre-aligned


class FaceSource(Protocol):
    """What the loop needs of an embedder (`facesearch.embedder.runtime.Embedder` is one).

    In worker processes, each works on its own copy: made by the source's `worker_factory(threads)`
    where it has one (Embedder), else unpickled. A source that does neither runs in the calling
    process: `faces` from worker threads, `embed` only from the thread that iterates. A source may
    also offer `faces_in_files([(path, bytes or None), ...])` (several photos in one go, each a list
    of crops or an `ImageReadError`), which the loop then uses instead of `faces`.
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

    def __getstate__(self) -> dict:
        # ImageReadError's constructor takes (path, reason), which exception pickling does not
        # replay: send those two across processes instead.
        state = dict(self.__dict__)
        if self.error is not None:
            state["error"] = (self.error.path, self.error.reason)
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("error") is not None:
            state["error"] = ImageReadError(*state["error"])
        self.__dict__.update(state)


def build_settings(embedder: FaceSource, faces: str) -> dict:
    """How an embedder and a face policy make vectors: an index's manifest and a shard folder record
    it, and vectors made with other settings are not mixed with them."""
    return {"faces": faces, "crops": getattr(embedder, "crop_method", "unknown")}


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
        workers: processes that read, detect, align and embed (each on one thread); default: the
            cores available; at most one per `MIN_PHOTOS_PER_PROCESS` photos. 1 (or a small job)
            works in the calling process (on one thread, for a job of that size). An embedder that cannot go to another process (see
            `FaceSource`) runs here with this many threads reading photos (default
            `embedder.core.constants.reader_threads()`).
        on_batch: called after each batch with the number of photos it held.

    Unreadable photos come back with `error` set; the caller decides whether that is fatal.
    Stopping early (an exception in the caller, Ctrl-C, closing the generator) stops the workers.
    """
    if policy not in FACE_POLICIES:
        raise ValueError(f"face policy must be one of {FACE_POLICIES}, got {policy!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in paths]
    chunks = [(i, paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
    factory = worker_factory(embedder)
    if factory is None:
        batches = _in_threads(paths, chunks, embedder, batch_size, policy, reusable, workers)
    else:
        processes = min(workers or available_cores(), len(chunks), len(paths) // MIN_PHOTOS_PER_PROCESS)
        if processes > 1:
            batches = _in_processes(chunks, functools.partial(_ChunkWorker, factory, policy, reusable, batch_size),
                                    processes)
        else:
            # One worker, in this process: for a job worth it, the same copy a worker process would
            # build (one thread, set up for many photos), so that the figures of 1 and N workers,
            # and their results, compare; for a few photos, the caller's own embedder (no start-up).
            own_copy = hasattr(embedder, "worker_factory") and len(paths) >= MIN_PHOTOS_PER_PROCESS
            here = _ChunkWorker(factory if own_copy else embedder, policy, reusable, batch_size)
            batches = (here.run(chunk) for chunk in chunks)
    for batch in batches:
        if on_batch is not None:
            on_batch(len(batch))
        yield batch


def worker_factory(embedder: FaceSource) -> Callable[[], FaceSource] | None:
    """A picklable recipe for a copy of `embedder` in a worker process, or None if there is none."""
    make = getattr(embedder, "worker_factory", None)
    if callable(make):
        return make(threads=1)
    try:
        data = pickle.dumps(embedder)
    except Exception:  # a lock, an open session, a local class: it stays in this process
        return None
    return functools.partial(pickle.loads, data)


@dataclass
class _ChunkWorker:
    """What one worker holds: the face source (built once) and the loop's settings; `run` maps a chunk."""

    source: FaceSource | Callable[[], FaceSource]
    policy: str
    reusable: frozenset[str]
    batch_size: int

    def __post_init__(self):
        if not hasattr(self.source, "card"):  # a recipe: build the copy here, in the worker
            self.source = self.source()

    def run(self, chunk: tuple[int, list[Path]]) -> list[PhotoFaces]:
        """Read, find, select and embed the faces of one chunk (start position, paths)."""
        start, paths = chunk
        results, todo = [], []
        for i, path in enumerate(paths, start):
            try:
                data = path.read_bytes()
            except OSError as e:
                results.append(PhotoFaces(i, path, error=ImageReadError(path, e.strerror or str(e))))
                continue
            digest = sha256(data).hexdigest()
            results.append(PhotoFaces(i, path, sha256=digest, reuse=digest in self.reusable))
            if digest not in self.reusable:
                todo.append((results[-1], data))
        many = getattr(self.source, "faces_in_files", None)
        try:
            found = many([(r.path, data) for r, data in todo]) if many is not None else \
                [_faces_or_error(self.source, r.path) for r, _ in todo]
        except Exception:  # one photo broke more than its own read: find it, keep the others
            found = [_faces_or_error(self.source, r.path, data) for r, data in todo]
        crops = []
        for (r, _), faces in zip(todo, found):
            if isinstance(faces, ImageReadError):
                r.error, r.sha256 = faces, ""
                continue
            keep = select_faces(faces, policy=self.policy)
            r.n_faces, r.kept = len(faces), [(k, _as_box(faces[k].box)) for k in keep]
            crops.extend(faces[k].image for k in keep)
        card = self.source.card
        _attach_vectors(results, crops, self.source, self.batch_size, card.embedding_size, card.name)
        return results


def _in_processes(chunks: list[tuple[int, list[Path]]], make_worker: Callable[[], _ChunkWorker],
                  processes: int) -> Iterator[list[PhotoFaces]]:
    """The chunks' results in order, from `processes` workers; a chunk whose worker died is redone
    photo by photo, and a photo that kills a worker again is reported as unreadable."""
    with WorkerPool(processes, make_worker, _run_chunk) as pool:
        done = 0
        while done < len(chunks):
            try:
                for batch in pool.imap(chunks[done:], window=WINDOW_PER_WORKER * processes):
                    done += 1
                    yield batch
            except WorkerCrashedError:
                yield _one_by_one(pool, chunks[done])
                done += 1


def _one_by_one(pool: WorkerPool, chunk: tuple[int, list[Path]]) -> list[PhotoFaces]:
    start, paths = chunk
    out = []
    for i, path in enumerate(paths, start):
        future: Future = pool.submit((i, [path]))
        try:
            out.extend(future.result())
        except BrokenProcessPool:
            pool.restart()
            out.append(PhotoFaces(i, path, error=ImageReadError(path, "the worker process reading it died "
                                                                      "(a crash in an image decoder?)")))
    return out


def _run_chunk(worker: _ChunkWorker, chunk: tuple[int, list[Path]]) -> list[PhotoFaces]:
    return worker.run(chunk)


def _faces_or_error(source: FaceSource, path: Path, data: bytes | None = None
                    ) -> Sequence[FaceCropLike] | ImageReadError:
    """The faces of one photo, or why there are none: any failure is this photo's, never the run's."""
    many = getattr(source, "faces_in_files", None)
    try:
        if many is None:
            return list(source.faces(path))
        (found,) = many([(path, data)])
        return found
    except ImageReadError as e:
        return e
    except Exception as e:  # a decoder or the detector failing on this photo alone
        return ImageReadError(path, f"{type(e).__name__}: {e}")


def _in_threads(paths: list[Path], chunks: list[tuple[int, list[Path]]], embedder: FaceSource, batch_size: int,
                policy: str, reusable: frozenset[str], workers: int | None) -> Iterator[list[PhotoFaces]]:
    """The loop in this process: threads read and find faces, the calling thread embeds."""
    card = embedder.card
    with ThreadPoolExecutor(max_workers=workers or reader_threads(), thread_name_prefix="facesearch-read") as pool:
        def submit(chunk: tuple[int, list[Path]]) -> list[Future]:
            start, batch = chunk
            return [pool.submit(_read, embedder, path, reusable) for path in batch]

        pending: list[Future] = []
        try:
            pending = submit(chunks[0]) if chunks else []
            for b, (start, batch) in enumerate(chunks):
                current, pending = pending, (submit(chunks[b + 1]) if b + 1 < len(chunks) else [])
                results, crops = [], []
                for i, fut in zip(range(start, start + len(batch)), current):
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
        workers: processes (see `embed_photos`).
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
