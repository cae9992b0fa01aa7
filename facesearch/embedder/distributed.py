"""The Ray engine: the photo -> vectors stage as a Ray Data job, written into an embedding shard folder.

`ray.data.from_items` (the photo list) -> `map_batches(PhotoEmbedder, compute=ActorPoolStrategy)`
(each actor loads the model once and reads, decodes, detects and embeds its batches) -> the
driver streams the results, in input order, into `ShardWriter`. Ray schedules; nothing here
does. Ray is the [distributed] extra and is imported only inside the functions that use it.

A cluster's workers must import facesearch (install it on every node) and read the photos and
the model folder at the same paths as the driver (a shared file system).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import EngineError
from facesearch.embedder.detect import DetectorConfig
from facesearch.embedder.embedding_job import (
    EmbedReport,
    PhotoItem,
    PhotoOutcome,
    Progress,
    rows_of_photos,
    run_job,
)
from facesearch.embedder.embedding_shards import DEFAULT_ROWS_PER_FILE, EmbeddingRows
from facesearch.embedder.pipeline import embed_photos
from facesearch.embedder.runtime import Embedder

MAX_BLOCKS = 10_000  # input blocks; below it, one block per batch of photos spreads work evenly


@dataclass(frozen=True)
class EmbedderSpec:
    """How an actor builds its `Embedder` (an inference session cannot be pickled; this can).

    Used for embedders without a `worker_factory` of their own (see `embedder_recipe`).
    """

    model_dir: str
    aligned: bool | None = None
    detector: DetectorConfig | None = None
    threads: int | None = 1  # inference threads per actor: actors, not threads, fill the cores

    def __call__(self) -> Embedder:
        return Embedder(self.model_dir, threads=self.threads, aligned=self.aligned, detector=self.detector)


def embedder_recipe(embedder: Embedder, threads: int = 1) -> Callable[[], Embedder]:
    """A picklable callable that rebuilds `embedder` in an actor: same model folder, crop mode,
    detector options (and backend, through the embedder's own `worker_factory` where it has one)."""
    make = getattr(embedder, "worker_factory", None)
    if callable(make):
        return make(threads=threads)
    return EmbedderSpec(str(embedder.model_dir), embedder.aligned, embedder.detector_config, threads)


class PhotoEmbedder:
    """The Ray Data callable class: one `Embedder` per actor, loaded in `__init__`, reused for every batch.

    `__call__` takes a batch of photo rows (`path`, `identity`, `size`, `mtime_ns`; -1 for unknown)
    and returns, for each photo in order, one photo row (`face` -1, or -2 when it could not be
    read; `n_faces`, `error`) followed by one row per kept face (`face` 0.., `embedding`, `box`,
    a NaN box for none).
    """

    def __init__(self, make_embedder: Callable[[], Embedder], root: str, faces: str, batch_size: int):
        self.embedder = make_embedder()
        self.root = Path(root)
        self.faces = faces
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [PhotoItem(str(p), str(i), None if s < 0 else int(s), None if m < 0 else int(m))
                 for p, i, s, m in zip(batch["path"], batch["identity"], batch["size"], batch["mtime_ns"])]
        try:
            rows, outcomes = self._embed(items)
        except Exception:  # one photo broke more than its own read: find it and keep the others
            rows, outcomes = self._embed_one_by_one(items)
        return encode_results(rows, outcomes, self.embedder.card.embedding_size)

    def _embed(self, items: Sequence[PhotoItem]) -> tuple[EmbeddingRows, list[PhotoOutcome]]:
        results = [r for b in embed_photos([self.root / it.path for it in items], self.embedder,
                                           batch_size=self.batch_size, policy=self.faces, workers=1) for r in b]
        return rows_of_photos(items, results, self.embedder.card.embedding_size)

    def _embed_one_by_one(self, items: Sequence[PhotoItem]) -> tuple[EmbeddingRows, list[PhotoOutcome]]:
        parts, outcomes = [], []
        for item in items:
            try:
                rows, outcome = self._embed([item])
            except Exception as e:  # counted and listed as this photo's failure, never the job's
                rows, outcome = None, [PhotoOutcome(item.path, error=f"{type(e).__name__}: {e}")]
            if rows is not None:
                parts.append(rows)
            outcomes.extend(outcome)
        return EmbeddingRows.concat(parts, self.embedder.card.embedding_size), outcomes


def encode_results(rows: EmbeddingRows, outcomes: Sequence[PhotoOutcome], dim: int) -> dict[str, np.ndarray]:
    """`rows` and `outcomes` as one columnar batch: each photo's row, then its face rows (see `PhotoEmbedder`)."""
    by_path: dict[str, list[int]] = {}
    for i, path in enumerate(rows.path):
        by_path.setdefault(path, []).append(i)
    order: list[tuple[PhotoOutcome, int | None]] = []
    for o in outcomes:
        order.append((o, None))
        order.extend((o, i) for i in by_path.get(o.path, []))
    n = len(order)
    out = {"path": np.empty(n, object), "identity": np.empty(n, object), "face": np.full(n, -1, np.int32),
           "embedding": np.zeros((n, dim), np.float32), "box": np.full((n, 4), np.nan, np.float32),
           "sha256": np.full(n, "", object), "size": np.full(n, -1, np.int64), "mtime_ns": np.full(n, -1, np.int64),
           "n_faces": np.zeros(n, np.int32), "error": np.full(n, "", object)}
    for k, (o, i) in enumerate(order):
        out["path"][k], out["n_faces"][k] = o.path, o.n_faces
        if i is None:
            out["identity"][k], out["error"][k] = "", o.error or ""
            out["face"][k] = -2 if o.error is not None else -1
            continue
        out["identity"][k], out["face"][k], out["embedding"][k] = rows.identity[i], rows.face[i], rows.embedding[i]
        if rows.box[i] is not None:
            out["box"][k] = rows.box[i]
        out["sha256"][k] = (rows.sha256[i] if rows.sha256 else None) or ""
        out["size"][k] = _or_minus_one(rows.size[i] if rows.size else None)
        out["mtime_ns"][k] = _or_minus_one(rows.mtime_ns[i] if rows.mtime_ns else None)
    return out


def decode_results(batch: dict[str, np.ndarray]) -> tuple[EmbeddingRows, list[PhotoOutcome]]:
    """The inverse of `encode_results`: shard rows and photo outcomes, in order."""
    face = np.asarray(batch["face"])
    outcomes = [PhotoOutcome(str(p), int(n), str(e) if f == -2 else None)
                for p, n, e, f in zip(batch["path"][face < 0], batch["n_faces"][face < 0], batch["error"][face < 0],
                                      face[face < 0])]
    keep = np.flatnonzero(face >= 0)
    boxes = [None if np.isnan(b).any() else tuple(float(x) for x in b) for b in np.asarray(batch["box"])[keep]]
    rows = EmbeddingRows([str(batch["path"][i]) for i in keep], [str(batch["identity"][i]) for i in keep],
                         face[keep].astype(np.int32), np.asarray(batch["embedding"], np.float32)[keep], boxes,
                         [str(batch["sha256"][i]) or None for i in keep],
                         [None if batch["size"][i] < 0 else int(batch["size"][i]) for i in keep],
                         [None if batch["mtime_ns"][i] < 0 else int(batch["mtime_ns"][i]) for i in keep])
    return rows, outcomes


def _or_minus_one(value: int | None) -> int:
    return -1 if value is None else int(value)


def embed_to_shards_ray(root: str | os.PathLike, items: Sequence[PhotoItem], embedder: Embedder,
                        out: str | os.PathLike, *, faces: str = "largest", batch_size: int = DEFAULT_BATCH_SIZE,
                        strict: bool = False, overwrite: bool = False, rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                        address: str | None = None, actors: int | None = None,
                        progress: Progress | None = None) -> EmbedReport:
    """`embedding_job.embed_to_shards` as a Ray Data job: same arguments, same folder, same report.

    Connects to the running Ray instance if this process has one, else to `address` (or
    $RAY_ADDRESS), else starts a local instance for the run and stops it afterwards.

    Args:
        embedder: the model, as the driver loaded it (checked here; each actor rebuilds it from
            `embedder_recipe(embedder)`, on one thread).
        address: a Ray cluster's address, e.g. "ray://head:10001" or "auto".
        actors: model actors (default: one per CPU of the cluster); each asks for a fraction of
            a CPU so that Ray Data's own tasks can still be scheduled (a full CPU each stalls
            the job on small machines).
        Other arguments: see `embed_to_shards`.

    Raises:
        EngineError: Ray is not installed, or the job failed outside any one photo.
        DatasetError, ImageReadError, EmbeddingShardError: as `embed_to_shards`.
    """
    ray = _import_ray()
    root = Path(root)

    def batches(items: list[PhotoItem], report: EmbedReport) -> Iterator[tuple[EmbeddingRows, list[PhotoOutcome]]]:
        started = _connect(ray, address)
        try:
            for batch in _run(ray, root, items, embedder_recipe(embedder), faces, batch_size, actors, report):
                yield decode_results(batch)
        finally:
            if started:
                ray.shutdown()

    return run_job(root, items, embedder, out, "ray", batches, faces=faces, strict=strict, overwrite=overwrite,
                   rows_per_file=rows_per_file, progress=progress)


def _run(ray, root: Path, items: Sequence[PhotoItem], recipe: Callable[[], Embedder], faces: str, batch_size: int,
         actors: int | None, report: EmbedReport):
    """Yield the job's result batches (numpy dicts) in input order."""
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    batches = max(1, math.ceil(len(items) / batch_size))
    n = max(1, min(actors or int(cpus), batches))
    # Leave one CPU's worth for Ray Data's own tasks: with whole CPUs per actor, 2 actors on a
    # 2-core machine never let the input tasks run (scale-facts.md).
    per_actor = max(0.25, min(1.0, (cpus - 1.0) / n))
    report.actors = n
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True  # the writer takes rows sorted by path
    context.enable_progress_bars = False  # ours counts photos
    try:
        rows = [{"path": it.path, "identity": it.identity, "size": _or_minus_one(it.size),
                 "mtime_ns": _or_minus_one(it.mtime_ns)} for it in items]
        dataset = ray.data.from_items(rows, override_num_blocks=min(batches, MAX_BLOCKS))
        results = dataset.map_batches(
            PhotoEmbedder, fn_constructor_kwargs={"make_embedder": recipe, "root": str(root), "faces": faces,
                                                  "batch_size": batch_size},
            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n),
            num_cpus=per_actor)
        try:
            yield from results.iter_batches(batch_format="numpy", batch_size=None)
        except ray.exceptions.RayError as e:
            raise EngineError(f"the Ray job failed: {_first_line(e)} - see the Ray logs for the worker's traceback") \
                from e
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError as e:
        raise EngineError(f"--engine ray needs Ray Data: pip install 'facesearch[distributed]' ({e})") from e
    return ray


def _connect(ray, address: str | None) -> bool:
    """Join this process's Ray instance, else `address` / $RAY_ADDRESS, else start one; True if we started it."""
    import logging

    if ray.is_initialized():
        return False
    try:
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or os.environ.get("RAY_ADDRESS") or "a local instance"
        raise EngineError(f"cannot start or reach Ray ({where}): {_first_line(e)}") from e
    return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
