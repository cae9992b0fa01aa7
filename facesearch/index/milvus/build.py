"""`build-index` onto a Milvus gallery: from a folder of photos (incremental) or from embedding shards.

The same mirror rules as a folder index (facesearch.index.sync): new photos are embedded and added,
photos gone from the folder (or the shards) are removed, unchanged ones are not read; a photo whose
size or mtime changed is checksummed and embedded again only if its bytes changed. Everything a
build does is one generation (writer.py), calibrated before its commit by the open-set code the
folder index uses (facesearch.index.openset.open_set), on the pending rows read back from Milvus.

Differences from a folder index, kept small on purpose: a photo in which no face was found leaves
no row, so it is read again by the next build; a moved photo is embedded again (no reuse by content).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import DatasetError, IndexFormatError, IndexMismatchError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.embedder.pipeline import FACE_POLICIES, build_settings, embed_photos
from facesearch.index.milvus.address import MilvusAddress
from facesearch.index.milvus.engine import (
    choose_index,
    connect,
    create_collections,
    disconnect,
    drop_collections,
    is_lite_server,
    translated,
)
from facesearch.index.milvus.meta import COMMIT_KEY, MilvusManifest, read_manifest, write_doc
from facesearch.index.milvus.writer import MilvusWriter, open_milvus_writer
from facesearch.index.openset.open_set import calibrate_on_commit, unchanged_calibration
from facesearch.index.protocols import EmbedderLike, Progress
from facesearch.index.storage.store import Photo
from facesearch.index.sync.build import BuildReport, _hash_files, _photo
from facesearch.index.sync.scan import plan_update, scan_folder


def prepare_gallery(client, address: MilvusAddress, card: ModelCard, *, model_dir: str, source_dir: str,
                    build: dict, index_type: str | None = None, target_recall: float | None = None,
                    rebuild: bool = False, check_build: bool = True) -> MilvusManifest:
    """The gallery's committed state, after creating it (generation 0, empty) if it is not there.

    `build` (face policy, crop method) is recorded by a new gallery and, with `check_build`, must be
    an existing one's (an enrolment picks its face itself and checks only the model).

    Raises:
        IndexMismatchError: the gallery holds another model's vectors, or vectors of another
            dimension, or was made with other build settings (pass rebuild).
        MilvusError: `index_type` is one the engine would not build.
    """
    lite = address.lite or is_lite_server(client)
    with translated(address, "looking for the gallery"):
        present = client.has_collection(address.collection) and client.has_collection(address.meta_collection)
    if present and not rebuild:
        try:
            m = read_manifest(client, address)
        except IndexFormatError:
            m = None  # a first build that never committed: made again below
        if m is not None:
            m.check_model(card, "build", "pass --rebuild to replace its contents")
            if m.dim != card.embedding_size:
                raise IndexMismatchError(f"the Milvus gallery {address} holds {m.dim}-d vectors; the model "
                                         f"{card.describe()} makes {card.embedding_size}-d ones - pass --rebuild")
            if check_build and m.build and build and m.build != build:
                raise IndexMismatchError(f"the Milvus gallery {address} was built with {m.build}, this build uses "
                                         f"{build} - pass --rebuild to embed every photo again")
            if index_type is None and target_recall is None:
                return m
            return _reindex(client, address, m, choose_index(index_type or m.index.index_type,
                                                               target_recall or m.index.target_recall, lite=lite))
    choice = choose_index(index_type, target_recall, lite=lite)  # refused before anything is dropped
    drop_collections(client, address)
    create_collections(client, address, card.embedding_size, choice)
    m = MilvusManifest(0, card.embedding_size, 0, 0, 0, 0, card, str(model_dir), str(source_dir), choice, build)
    write_doc(client, address, COMMIT_KEY, m.to_dict())
    return m


def _reindex(client, address: MilvusAddress, m: MilvusManifest, choice) -> MilvusManifest:
    """The gallery with another vector index, built by the engine from the stored vectors, under the lease.

    Milvus drops and builds an index on a released collection: queries of other processes fail with a
    `MilvusError` until it is loaded again (seconds to minutes, by size).
    """
    if choice == m.index:
        return m
    writer = open_milvus_writer(client, address)
    try:
        with translated(address, "changing the gallery's index type"):
            client.release_collection(address.collection)
            client.drop_index(address.collection, "vector")
            params = client.prepare_index_params()
            params.add_index("vector", index_type=choice.index_type, metric_type="IP", params=choice.build_params)
            client.create_index(address.collection, params)
            client.load_collection(address.collection)
        return writer.commit(writer.pending_manifest(index=choice))
    finally:
        writer.release()


def commit_write(writer: MilvusWriter, *, fpir: float | None = None, force_calibration: bool = False,
                 **changes) -> tuple[MilvusManifest, dict]:
    """Settle the calibration on the pending rows, then commit; returns (manifest, calibration outcome)."""
    pending = writer.pending_manifest(**changes)
    outcome = calibrate_on_commit(writer.view(pending), writer.manifest.calibration, requested_fpir=fpir,
                                  force=force_calibration)
    return writer.commit(replace(pending, calibration=outcome.calibration)), outcome.to_dict()


def _finish(writer: MilvusWriter, report: BuildReport, fpir: float | None, **changes) -> BuildReport:
    """Commit what a build staged (nothing staged and no rate asked: nothing written) and fill its report."""
    t = time.perf_counter()
    if writer.added or writer.removed or fpir is not None:
        m, calibration = commit_write(writer, fpir=fpir, **changes)
        written = True
    else:
        m, calibration, written = writer.manifest, unchanged_calibration(writer.manifest.calibration), False
    report.seconds["save"] = time.perf_counter() - t
    return _report(report, m, written, calibration)


def _report(report: BuildReport, m: MilvusManifest, written: bool, calibration: dict) -> BuildReport:
    report.vectors, report.photos, report.identities, report.generation = m.faces, m.photos, m.identities, m.generation
    report.written, report.calibration = written, calibration
    report.segments, report.index_types = 1, [m.index.index_type]
    return report


def build_from_photos(source_dir: str | os.PathLike, address: MilvusAddress, token: str | None,
                      embedder: EmbedderLike, *, faces: str = "largest", strict: bool = False, rebuild: bool = False,
                      batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                      progress: Progress | None = None, fpir: float | None = None, index_type: str | None = None,
                      target_recall: float | None = None, wait: float = 0.0) -> BuildReport:
    """Make the Milvus gallery at `address` mirror the `<identity>/<photo>` folder `source_dir`.

    Raises:
        DatasetError: the folder is missing or holds no image, or no face at all would be stored.
        IndexMismatchError: the gallery was built with another model (pass rebuild).
        MilvusError (and subclasses): the server is down, refuses the token, or the index type.
    """
    if faces not in FACE_POLICIES:
        raise ValueError(f"faces must be one of {FACE_POLICIES}, got {faces!r}")
    start = time.perf_counter()
    scan = scan_folder(source_dir)
    root = scan.root
    report = BuildReport(str(root), str(address), total_files=len(scan.files), ignored=scan.ignored)
    client = connect(address, token)
    try:
        prepare_gallery(client, address, embedder.card, model_dir=str(embedder.model_dir), source_dir=str(root),
                        build=build_settings(embedder, faces), index_type=index_type, target_recall=target_recall,
                        rebuild=rebuild)
        report.rebuilt = rebuild
        writer = open_milvus_writer(client, address, wait)
        try:
            indexed = writer.store.photos()
            plan = plan_update(scan.files, indexed)
            digests = _hash_files(plan.touched, root, workers, progress)
            to_embed = list(plan.new)
            for f in plan.touched:
                if digests[f.path] == indexed[f.path].sha256:
                    _refresh_stat(writer, f)
                else:
                    to_embed.append(f)
            to_embed.sort(key=lambda f: f.path)
            report.unchanged, report.removed = len(scan.files) - len(to_embed), len(plan.removed)
            writer.remove_paths(plan.removed + [f.path for f in to_embed if f.path in indexed])
            report.seconds["scan"] = time.perf_counter() - start
            t = time.perf_counter()
            _embed_into(writer, root, to_embed, indexed, embedder, report, batch_size=batch_size, strict=strict,
                        faces=faces, workers=workers, progress=progress)
            report.seconds["embed"] = time.perf_counter() - t
            report.images_per_second = len(to_embed) / report.seconds["embed"] if to_embed else 0.0
            if writer.manifest.faces + writer.added - writer.removed == 0:
                raise DatasetError(f"no face was found in any of the {len(scan.files)} photos of '{root}' "
                                   f"({len(report.skipped)} unreadable): nothing to index")
            return _finish(writer, report, fpir, source_dir=str(root))
        finally:
            writer.release()
    finally:
        disconnect(client, address)


def _refresh_stat(writer: MilvusWriter, f) -> None:
    """A photo touched but unchanged: its rows take the new size and mtime (metadata of builds only,
    updated in place; a crash meanwhile only means it is checksummed again)."""
    rows = writer.store.query(f'path == "{_escape(f.path)}"', ["*"])
    for r in rows:
        r["size"], r["mtime_ns"] = f.size, f.mtime_ns
    with translated(writer.address, "refreshing a photo's size and mtime"):
        writer.client.upsert(writer.address.collection, rows)


def _embed_into(writer: MilvusWriter, root: Path, to_embed, indexed: dict[str, Photo], embedder: EmbedderLike,
                report: BuildReport, *, batch_size: int, strict: bool, faces: str, workers: int | None,
                progress: Progress | None) -> None:
    done = 0
    if progress is not None and to_embed:
        progress("embed", 0, len(to_embed))
    for batch in embed_photos([root / f.path for f in to_embed], embedder, batch_size=batch_size, policy=faces,
                              workers=workers):
        items = []
        for r in batch:
            file = to_embed[r.position]
            if r.error is not None:
                if strict:
                    raise r.error
                report.skipped.append((file.path, r.error.reason))
                continue
            report.updated += file.path in indexed
            report.added += file.path not in indexed
            report.no_face += r.n_faces == 0
            report.multi_face += r.n_faces > 1
            if r.kept:
                items.append((_photo(file, r.sha256, r.n_faces), r.kept, r.vectors))
        writer.add_photos(items)
        done += len(batch)
        if progress is not None:
            progress("embed", done, len(to_embed))


def build_from_embeddings(shards_dir: str | os.PathLike, address: MilvusAddress, token: str | None, *,
                          model_dir: str | os.PathLike | None = None, rebuild: bool = False,
                          fpir: float | None = None, index_type: str | None = None,
                          target_recall: float | None = None, progress: Progress | None = None,
                          wait: float = 0.0) -> BuildReport:
    """Make the Milvus gallery at `address` mirror an embedding shard folder (nothing is embedded).

    A photo is unchanged when its sha256 (both sides having one), else its identity, faces and
    vectors are the same; changed photos are removed and added again.

    Raises:
        EmbeddingShardError: not a shard folder, or a bad row.
        IndexMismatchError: the shards' model is not the gallery's (pass rebuild).
    """
    from facesearch.embedder.embedding_shards import open_shards
    from facesearch.index.sync.ingest import SAME_VECTOR_ATOL, _photo_batches

    start = time.perf_counter()
    shards = open_shards(shards_dir)
    card = shards.card
    report = BuildReport(str(Path(shards_dir).resolve()), str(address))
    client = connect(address, token)
    try:
        prepare_gallery(client, address, card, model_dir=str(model_dir or Path(shards_dir).resolve()),
                        source_dir=str(Path(shards_dir).resolve()), build=dict(shards.build or {}),
                        index_type=index_type, target_recall=target_recall, rebuild=rebuild)
        report.rebuilt = rebuild
        writer = open_milvus_writer(client, address, wait)
        try:
            indexed = writer.store.photos()
            seen: set[str] = set()
            done = 0
            for photos, rows in _photo_batches(shards.batches()):
                items, outgoing = [], []
                for p in photos:
                    seen.add(p.path)
                    old = indexed.get(p.path)
                    if old is not None and _same(writer, p, old, SAME_VECTOR_ATOL):
                        report.unchanged += 1
                        continue
                    if old is not None:
                        outgoing.append(p.path)
                    report.updated += old is not None
                    report.added += old is None
                    items.append((p.photo(), p.faces, p.vectors))
                writer.remove_paths(outgoing)
                writer.add_photos(items)
                done += rows
                if progress is not None:
                    progress("ingest", done, shards.num_rows)
            gone = sorted(set(indexed) - seen)
            report.removed = len(gone)
            writer.remove_paths(gone)
            report.total_files = len(seen)
            report.seconds["embed"] = time.perf_counter() - start
            if writer.manifest.faces + writer.added - writer.removed == 0:
                raise DatasetError(f"the shards in '{shards_dir}' hold no row: nothing to index")
            return _finish(writer, report, fpir)
        finally:
            writer.release()
    finally:
        disconnect(client, address)


def _same(writer: MilvusWriter, p, old: Photo, atol: float) -> bool:
    if p.sha256 and old.sha256:
        return p.sha256 == old.sha256 and p.identity == old.identity
    rows = sorted(writer.store.query(f'path == "{_escape(p.path)}"', ["face", "identity", "vector"]),
                  key=lambda r: r["face"])
    return (len(rows) == len(p.faces) and all(r["identity"] == p.identity for r in rows)
            and [r["face"] for r in rows] == [f for f, _ in p.faces]
            and np.allclose(np.asarray([r["vector"] for r in rows], np.float32), p.vectors, atol=atol))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
