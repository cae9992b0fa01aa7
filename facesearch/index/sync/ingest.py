"""Filling an index from an embedding shard folder: the same mirror semantics as a photo folder.

`build-index --from-embeddings SHARDS` takes ready-made vectors (from `facesearch embed`, a Ray job,
or a user's own tool) instead of photos: photos new to the index are added, photos gone from the
shards are removed, and unchanged photos are kept without touching their segment. A photo is
unchanged when its sha256 (if both sides have one) or else its stored vectors, identity and faces
are the same. Nothing is decoded or embedded; the shards' model card must be the index's model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from facesearch.embedder.core.atomic import atomic_write_json
from facesearch.embedder.core.boxes import box_tuple
from facesearch.embedder.core.errors import DatasetError
from facesearch.embedder.embedding_shards import EmbeddingRows, open_shards
from facesearch.index.openset.commit import COMMIT_CALIBRATION
from facesearch.index.openset.open_set import unchanged_calibration
from facesearch.index.protocols import Progress
from facesearch.index.storage.manifest import IndexPolicy
from facesearch.index.storage.store import Photo
from facesearch.index.storage.writer import IndexWriter
from facesearch.index.sync.build import BuildReport, tuned_segments

# Stored and incoming vectors of an unchanged photo differ by at most float rounding of a file round trip.
SAME_VECTOR_ATOL = 1e-6


@dataclass
class _IncomingPhoto:
    """One photo's rows of the shards, in face order."""

    path: str
    identity: str
    faces: list[tuple[int, tuple | None]]
    vectors: np.ndarray  # (faces, d) float32
    sha256: str
    size: int
    mtime_ns: int

    def photo(self) -> Photo:
        return Photo(self.path, self.identity, self.size, self.mtime_ns, self.sha256, len(self.faces), "folder")


def build_index_from_embeddings(shards_dir: str | os.PathLike, index_dir: str | os.PathLike, *,
                                model_dir: str | os.PathLike | None = None, rebuild: bool = False,
                                policy: IndexPolicy | None = None, fpir: float | None = None,
                                progress: Progress | None = None) -> BuildReport:
    """Create or update the index in `index_dir` so that it mirrors the shard folder `shards_dir`.

    Args:
        shards_dir: an embedding shard folder (`facesearch.embedder.embedding_shards`).
        index_dir: the index directory.
        model_dir: the folder of the model that made the vectors, recorded for `query` (default:
            the index's, else the shard folder itself, which holds the model's card).
        rebuild: discard the existing index (even one built by another model or damaged).
        policy: index type, memory budget, raw vector dtype; None keeps the index's.
        fpir: the false-positive identification rate the open-set threshold is calibrated for
            (None: the stored one, else 1%; see `facesearch.index.openset.open_set`).
        progress: called as `progress("ingest", rows done, rows)`.

    Returns:
        A `BuildReport` (photo counts are over the shards' photos; `skipped` is always empty:
        bad rows are refused with their file and row before anything is written).

    Raises:
        EmbeddingShardError: the folder is not a complete shard folder, or a row is bad.
        IndexMismatchError: the shards' model is not the index's (and not `rebuild`).
        DatasetError: the shards hold no row.
    """
    start = time.perf_counter()
    shards = open_shards(shards_dir)
    shards_dir = Path(shards_dir).expanduser().resolve()
    index_dir = Path(index_dir).expanduser().resolve()
    report = BuildReport(str(shards_dir), str(index_dir))
    if shards.num_rows == 0:
        raise DatasetError(f"the embedding shards in '{shards_dir}' hold no row: nothing to index")
    settings = dict(shards.build) if shards.build else None
    existed = (index_dir / "manifest.json").exists()
    with IndexWriter.open(index_dir, calibrator=COMMIT_CALIBRATION, card=shards.card, model_dir=model_dir or shards_dir, source_dir=shards_dir,
                          build=settings, policy=policy, rebuild=rebuild) as writer:
        if model_dir is None and not writer.fresh:
            writer.set_settings(model_dir=Path(writer.manifest.model_dir))  # keep where query finds the model
        report.rebuilt = existed and writer.fresh
        indexed = {} if writer.fresh else writer.photos("folder")
        seen: set[str] = set()
        done = 0
        if progress is not None:
            progress("ingest", 0, shards.num_rows)
        # Files unchanged since the last ingest (same size, mtime and rows as recorded then), whose photos the
        # index still holds as they were, cost a read of their path and identity columns; only the others
        # are read, checked and compared row by row.
        recorded = {} if writer.fresh else _recorded_files(index_dir, shards_dir, shards.card)
        changed = []
        for file in shards.files:
            kept = _kept_photos(file, recorded.get(file.name), indexed)
            if kept is None:
                changed.append(file)
                continue
            for path in kept:
                if path in seen:
                    raise DatasetError(f"photo '{path}' appears twice in '{shards_dir}' (rows must be sorted by "
                                       "path and face, each photo's rows together)")
                seen.add(path)
            report.total_files += len(kept)
            report.unchanged += len(kept)
            report.multi_face += sum(1 for path in kept if indexed[path].n_faces > 1)
            done += sum(indexed[path].n_faces for path in kept)
        if progress is not None and done:
            progress("ingest", done, shards.num_rows)
        report.shard_files_read = len(changed)
        to_read = dataclasses.replace(shards, files=tuple(changed))
        for photos, rows in _photo_batches(to_read.batches()):
            stored = writer.faces_of([p.path for p in photos if p.path in indexed])
            for p in photos:
                if p.path in seen:
                    raise DatasetError(f"photo '{p.path}' appears twice in '{shards_dir}' (rows must be sorted by "
                                       "path and face, each photo's rows together)")
                seen.add(p.path)
                report.total_files += 1
                old = indexed.get(p.path)
                if old is None:
                    writer.add_photo(p.photo(), p.faces, p.vectors)
                    report.added += 1
                elif _unchanged(p, old, stored.get(p.path, []), writer):
                    report.unchanged += 1
                    if (old.identity, old.size, old.mtime_ns) != (p.identity, p.size, p.mtime_ns):
                        writer.put_photo(Photo(p.path, p.identity, p.size, p.mtime_ns, old.sha256, old.n_faces))
                else:
                    writer.remove_photos([p.path])
                    writer.add_photo(p.photo(), p.faces, p.vectors)
                    report.updated += 1
                report.multi_face += len(p.faces) > 1
            done += rows
            if progress is not None:
                progress("ingest", done, shards.num_rows)
        gone = sorted(set(indexed) - seen)
        writer.remove_photos(gone)
        report.removed = len(gone)
        report.seconds["scan"] = time.perf_counter() - start
        writer.request_calibration(fpir)
        first_new = writer.manifest.next_segment
        t = time.perf_counter()
        result = writer.commit()
        report.seconds["save"] = time.perf_counter() - t
        report.tuning = tuned_segments(writer.manifest, first_new)
        _record_files(index_dir, shards_dir, shards)  # after the commit: a crash before it keeps the old record
        m = writer.manifest
        report.written, report.merged, report.generation = result.written, result.merged, m.generation
        report.calibration = result.calibration if result.written else unchanged_calibration(m.calibration)
        report.vectors, report.photos, report.identities = m.faces, m.photos, m.identities
        report.segments, report.index_types = len(m.segments), [s.kind for s in m.segments]
    return report


RECORD_FILE = "shard_files.json"  # in the index folder: the shard files the last ingest read, by name


def _fingerprint(file: Path) -> dict:
    st = file.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "rows": pq.ParquetFile(file).metadata.num_rows}


def _recorded_files(index_dir: Path, shards_dir: Path, card) -> dict[str, dict]:
    """The files the last ingest from `shards_dir` read (name -> fingerprint); {} when none applies."""
    try:
        data = json.loads((index_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("shards_dir") != str(shards_dir) or \
            data.get("onnx_sha256") != card.onnx_sha256 or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _record_files(index_dir: Path, shards_dir: Path, shards) -> None:
    atomic_write_json(index_dir / RECORD_FILE, {
        "shards_dir": str(shards_dir), "onnx_sha256": shards.card.onnx_sha256,
        "files": {file.name: _fingerprint(file) for file in shards.files}})


def _kept_photos(file: Path, recorded: dict | None, indexed: dict[str, Photo]) -> list[str] | None:
    """The photos of an unchanged `file` when the index holds every one as the file has it; else None.

    Unchanged: the size, mtime and row count recorded by the last ingest. Held as the file has it: every
    photo of the file is in the index with that identity and that many faces (a photo removed or replaced
    since, through the service or the API, makes the file one to read again).
    """
    if recorded is None or _fingerprint(file) != recorded:
        return None
    table = pq.read_table(file, columns=["path", "identity"])
    paths, identities = table.column("path").to_pylist(), table.column("identity").to_pylist()
    kept, start = [], 0
    while start < len(paths):
        end = start + 1
        while end < len(paths) and paths[end] == paths[start]:
            end += 1
        photo = indexed.get(paths[start])
        if photo is None or photo.identity != identities[start] or photo.n_faces != end - start:
            return None
        kept.append(paths[start])
        start = end
    return kept


def _photo_batches(batches: Iterator[EmbeddingRows]) -> Iterator[tuple[list[_IncomingPhoto], int]]:
    """(complete photos, rows read) per batch of rows; a photo whose rows span two batches is joined."""
    pending: _IncomingPhoto | None = None
    for rows in batches:
        photos = list(_photos(rows))
        if pending is not None and photos and photos[0].path == pending.path:
            head = photos.pop(0)
            pending.faces += head.faces
            pending.vectors = np.concatenate([pending.vectors, head.vectors])
        if pending is not None and photos:
            photos.insert(0, pending)
            pending = None
        if photos:
            pending = photos.pop()
        yield photos, len(rows)
    if pending is not None:
        yield [pending], 0


def _photos(rows: EmbeddingRows) -> Iterator[_IncomingPhoto]:
    """Group a batch's rows by photo (rows of one photo are consecutive: shards are sorted by path, face)."""
    n = len(rows)
    start = 0
    while start < n:
        end = start + 1
        while end < n and rows.path[end] == rows.path[start]:
            end += 1
        yield _IncomingPhoto(
            path=rows.path[start], identity=rows.identity[start],
            faces=[(int(rows.face[i]), rows.box[i]) for i in range(start, end)],
            vectors=np.ascontiguousarray(rows.embedding[start:end], dtype=np.float32),
            sha256=(rows.sha256[start] if rows.sha256 is not None else None) or "",
            size=int(rows.size[start]) if rows.size is not None and rows.size[start] is not None else 0,
            mtime_ns=int(rows.mtime_ns[start]) if rows.mtime_ns is not None and rows.mtime_ns[start] is not None else 0)
        start = end


def _unchanged(p: _IncomingPhoto, old: Photo, stored, writer: IndexWriter) -> bool:
    """Whether the index already holds exactly these faces of this photo."""
    if len(stored) != len(p.faces) or [(s.face, s.box) for s in stored] != [(f, _box(b)) for f, b in p.faces]:
        return False
    if p.sha256 and old.sha256:
        return p.sha256 == old.sha256
    have = writer.vectors([s.id for s in stored])
    return bool(np.allclose(have, p.vectors, atol=SAME_VECTOR_ATOL))


_box = box_tuple
