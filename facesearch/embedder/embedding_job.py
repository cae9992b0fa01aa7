"""Photos -> an embedding shard folder: what both engines share (items, outcomes, report) and the local engine.

Reader -> mapper -> writer, as in clip-retrieval: the photo loop (`facesearch.embedder.pipeline.embed_photos`)
reads and embeds, `ShardWriter` writes. The Ray engine (`facesearch.embedder.distributed`) swaps the mapper
for an actor pool and keeps everything else, so both engines count, list and write the same way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import DatasetError, ImageReadError
from facesearch.embedder.embedding_shards import DEFAULT_ROWS_PER_FILE, EmbeddingRows, ShardWriter
from facesearch.embedder.pipeline import FACE_POLICIES, FaceSource, PhotoFaces, build_settings, embed_photos

Progress = Callable[[str, int, int], None]  # (phase, done, total), as facesearch.index.protocols.Progress


@dataclass(frozen=True)
class PhotoItem:
    """A photo to embed: its path relative to the gallery folder ('/'-separated) and its identity."""

    path: str
    identity: str
    size: int | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class PhotoOutcome:
    """What became of one photo: `error` says why it could not be read, else `n_faces` were found."""

    path: str
    n_faces: int = 0
    error: str | None = None


@dataclass
class EmbedReport:
    """What an `embed` run did. `photos == embedded + len(no_face) + len(skipped)`; `faces` rows written."""

    source_dir: str
    out_dir: str
    engine: str
    model: str
    faces_policy: str
    crops: str
    photos: int = 0
    embedded: int = 0  # photos with at least one face
    faces: int = 0  # rows written (one per kept face)
    multi_face: int = 0  # photos with several faces found
    no_face: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable photos
    ignored: int = 0  # files without an image extension
    files: list[str] = field(default_factory=list)  # the part files written
    seconds: float = 0.0
    images_per_second: float = 0.0
    actors: int | None = None  # Ray engine: model actors

    def add(self, outcome: PhotoOutcome, *, root: Path, strict: bool) -> None:
        """Count one photo's outcome.

        Raises:
            ImageReadError: with `strict`, for an unreadable photo.
        """
        if outcome.error is not None:
            if strict:
                raise ImageReadError(root / outcome.path, outcome.error)
            self.skipped.append((outcome.path, outcome.error))
        elif outcome.n_faces == 0:
            self.no_face.append(outcome.path)
        else:
            self.embedded += 1
            self.multi_face += outcome.n_faces > 1

    def finish(self, writer: ShardWriter, start: float) -> None:
        """Fill in what the writer wrote and the time taken (after `writer.close()`)."""
        self.faces = writer.rows
        self.files = [p.name for p in writer.files]
        self.seconds = time.perf_counter() - start
        self.images_per_second = self.photos / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d


def sorted_items(items: Sequence[PhotoItem], faces: str) -> list[PhotoItem]:
    """`items` sorted by path (the shards' row order), after checking the face policy and paths are unique."""
    if faces not in FACE_POLICIES:
        raise ValueError(f"faces must be one of {FACE_POLICIES}, got {faces!r}")
    out = sorted(items, key=lambda it: it.path)
    repeated = [a.path for a, b in zip(out, out[1:]) if a.path == b.path]
    if repeated:
        raise ValueError(f"photo paths must be unique; {repeated[0]!r} comes twice")
    return out


def rows_of_photos(items: Sequence[PhotoItem], results: Sequence[PhotoFaces],
                   dim: int) -> tuple[EmbeddingRows, list[PhotoOutcome]]:
    """Shard rows (one per kept face, `face` numbered 0.. in kept order) and one outcome per photo.

    Args:
        items: the photos, `results[i].position` indexing them.
        results: `embed_photos` results, in order.
        dim: the embedding size.
    """
    paths, identities, face, vectors, boxes, sha, size, mtime = [], [], [], [], [], [], [], []
    outcomes = []
    for r in results:
        item = items[r.position]
        if r.error is not None:
            outcomes.append(PhotoOutcome(item.path, error=r.error.reason))
            continue
        outcomes.append(PhotoOutcome(item.path, n_faces=r.n_faces))
        for j, (_, box) in enumerate(r.kept):
            paths.append(item.path)
            identities.append(item.identity)
            face.append(j)
            boxes.append(box)
            sha.append(r.sha256 or None)
            size.append(item.size)
            mtime.append(item.mtime_ns)
        if r.kept:
            vectors.append(r.vectors)
    matrix = np.concatenate(vectors).astype(np.float32, copy=False) if vectors else np.empty((0, dim), np.float32)
    return EmbeddingRows(paths, identities, np.asarray(face, np.int32), matrix, boxes, sha, size, mtime), outcomes


def nothing_embedded(root: Path, report: EmbedReport) -> DatasetError:
    """The error for a run that found no face at all (nothing is committed then)."""
    parts = []
    if report.skipped:
        path, reason = report.skipped[0]
        parts.append(f"{len(report.skipped)} unreadable (first: {path}: {reason})")
    if report.no_face:
        parts.append(f"{len(report.no_face)} without a face (first: {report.no_face[0]})")
    return DatasetError(f"no face vectors could be made from the {report.photos} images in '{root}': "
                        f"{', '.join(parts) or 'no photos'}; no embeddings were written - fix or replace the photos "
                        "(or pass --aligned for ready-made face crops) and run again")


def embed_to_shards(root: str | os.PathLike, items: Sequence[PhotoItem], embedder: FaceSource,
                    out: str | os.PathLike, *, faces: str = "largest", batch_size: int = DEFAULT_BATCH_SIZE,
                    strict: bool = False, overwrite: bool = False, rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                    workers: int | None = None, progress: Progress | None = None) -> EmbedReport:
    """Embed the photos `items` under `root` into the shard folder `out`, in this process (the local engine).

    Args:
        root: the gallery folder; `items` paths are relative to it.
        items: the photos (`facesearch.index.sync.scan.scan_folder` gives them, identity rule included).
        embedder: finds and embeds faces (`facesearch.embedder.runtime.Embedder`).
        out: the shard folder to write (see `ShardWriter` for an existing one).
        faces: "largest" keeps the largest face of each photo, "all" keeps every face.
        batch_size: photos per batch.
        strict: stop at the first unreadable photo instead of skipping it.
        overwrite: replace the shards in an existing shard folder.
        rows_per_file: rows per Parquet part file.
        workers: threads reading photos (`embed_photos`).
        progress: called as `progress("embed", done, total)`.

    Returns:
        An `EmbedReport`; the folder is committed (its card written) only when the run succeeds.

    Raises:
        DatasetError: no face at all in the photos (nothing is committed).
        ImageReadError: with `strict`, the first unreadable photo.
        EmbeddingShardError: `out` cannot take shards (a file, or a non-empty folder without `overwrite`).
    """
    root = Path(root)

    def batches(items: list[PhotoItem], report: EmbedReport) -> Iterator[tuple[EmbeddingRows, list[PhotoOutcome]]]:
        for results in embed_photos([root / it.path for it in items], embedder, batch_size=batch_size, policy=faces,
                                    workers=workers):
            yield rows_of_photos(items, results, embedder.card.embedding_size)

    return run_job(root, items, embedder, out, "local", batches, faces=faces, strict=strict, overwrite=overwrite,
                   rows_per_file=rows_per_file, progress=progress)


def run_job(root: Path, items: Sequence[PhotoItem], embedder: FaceSource, out: str | os.PathLike, engine: str,
            batches: Callable[[list[PhotoItem], EmbedReport], Iterator[tuple[EmbeddingRows, list[PhotoOutcome]]]],
            *, faces: str, strict: bool, overwrite: bool, rows_per_file: int,
            progress: Progress | None) -> EmbedReport:
    """What every engine does around its batches: sort the photos, count outcomes, write and commit the shards.

    Args:
        engine: the report's engine name.
        batches: called once as `batches(sorted_items, report)`; yields `(rows, outcomes)` with
            one outcome per photo, in input order. It is closed when the job stops early, so an
            engine's clean-up (a `finally`) runs at once.
        Other arguments: see `embed_to_shards`.
    """
    start = time.perf_counter()
    items = sorted_items(items, faces)
    card = embedder.card
    build = build_settings(embedder, faces)
    report = EmbedReport(str(root), str(out), engine, card.name, faces, build["crops"], photos=len(items))
    with ShardWriter(out, card, rows_per_file=rows_per_file, build=build, overwrite=overwrite) as writer:
        done = 0
        if progress is not None:
            progress("embed", 0, len(items))
        with contextlib.closing(batches(items, report)) as stream:
            for rows, outcomes in stream:
                for outcome in outcomes:
                    report.add(outcome, root=root, strict=strict)
                writer.write(rows)
                done += len(outcomes)
                if progress is not None:
                    progress("embed", done, len(items))
        if writer.rows == 0:
            raise nothing_embedded(root, report)
    report.finish(writer, start)
    return report
