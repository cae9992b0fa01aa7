"""Build or update a gallery index from a folder of `<identity>/<photo>` images.

Incremental by default: only new or changed photos are read and embedded; photos whose size
and mtime are unchanged are not read at all; a changed size or mtime with the same sha256 only
refreshes the metadata; a photo moved or copied to another path reuses its stored vectors.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

from embedder.core.constants import DEFAULT_BATCH_SIZE, reader_threads
from embedder.core.errors import DatasetError, IndexFormatError
from embedder.core.model_card import ModelCard, sha256_file
from embedder.pipeline import FACE_POLICIES, PhotoFaces, embed_photos
from index.gallery import GalleryIndex
from index.generation import build_lock, commit, generation_names, write_vectors
from index.manifest import DEFAULT_INDEX_TYPE, MANIFEST_FILE, Manifest, read_manifest, utc_now
from index.protocols import EmbedderLike, Progress
from index.scan import ScannedFile, plan_update, scan_folder
from index.store import MetadataStore, Photo, StoredFace

# Index types whose `reconstruct` returns the stored vector exactly, so moved photos keep theirs.
_EXACT_RECONSTRUCT = {"IDMap2,Flat"}


@dataclass
class BuildReport:
    """What a build did. Photo counts satisfy `total_files == added + updated + unchanged + len(skipped)`.

    `added`/`updated`: new/changed photos read successfully this run (including those with no
    face, and `reused` ones: content already indexed under another path, vectors kept).
    `removed`: indexed photos no longer in the folder. `skipped`: unreadable photos, with the
    reason; a changed photo that became unreadable loses its old vectors. `no_face`/`multi_face`:
    among photos read this run. `ignored`: files without an image extension.
    """

    source_dir: str
    index_dir: str
    total_files: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    no_face: int = 0
    multi_face: int = 0
    reused: int = 0
    ignored: int = 0
    vectors: int = 0
    photos: int = 0
    identities: int = 0
    generation: int = 0
    written: bool = False  # False when nothing changed and the index was left as it was
    rebuilt: bool = False  # True when previous contents were discarded (rebuild, new face policy or crop method)
    seconds: dict[str, float] = field(default_factory=lambda: {"scan": 0.0, "embed": 0.0, "save": 0.0})
    images_per_second: float = 0.0  # photos read + embedded per second in the embed phase

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d


@dataclass
class _Previous:
    """The current index, loaded for update (None parts when building from scratch)."""

    manifest: Manifest | None = None
    gallery: GalleryIndex | None = None
    photos: dict[str, Photo] = field(default_factory=dict)
    next_id: int = 0
    last_generation: int = 0


@dataclass
class _Changes:
    """Edits that turn the previous index into the new one.

    New vectors go straight into `vectors`, the in-memory FAISS index (the previous one, which
    this build alone holds, or a new one); outgoing ids are removed from it just before saving,
    so that moved photos can still take over their old vectors during the embed phase.
    """

    vectors: faiss.Index
    delete: list[str] = field(default_factory=list)  # photo paths whose rows go (removed or changed)
    put: list[Photo] = field(default_factory=list)  # photos inserted or updated
    faces: list[tuple[str, StoredFace]] = field(default_factory=list)  # new face rows
    remove_ids: list[int] = field(default_factory=list)
    added: int = 0  # vectors added


def build_index(source_dir: str | os.PathLike, index_dir: str | os.PathLike, embedder: EmbedderLike, *,
                batch_size: int = DEFAULT_BATCH_SIZE, strict: bool = False, rebuild: bool = False, faces: str = "largest",
                workers: int | None = None, progress: Progress | None = None) -> BuildReport:
    """Create or update the index in `index_dir` from the photos in `source_dir`.

    Args:
        source_dir: folder of `<identity>/<photo>` images (identity rule: `index.scan`).
        index_dir: index directory; created if missing, updated in place (crash-safe) if present.
        embedder: gives face crops of a photo and their embeddings (`index.protocols.EmbedderLike`).
        batch_size: photos read and embedded per batch.
        strict: raise on the first unreadable photo instead of skipping it.
        rebuild: discard the existing index (even one built by another model or damaged).
        faces: "largest" keeps the largest face of each photo, "all" keeps every face.
        workers: threads reading photos; default `embedder.core.constants.reader_threads()`.
        progress: optional callback, see `index.protocols.Progress`.

    Returns:
        A `BuildReport`.

    Raises:
        DatasetError: `source_dir` is missing, not a folder, has no images, or no face vector at
            all could be made (the previous index is then left as it was).
        ImageReadError: with `strict`, the first unreadable photo.
        IndexMismatchError: the index was built with another model (pass `rebuild=True`).
        IndexFormatError: the existing index is damaged (pass `rebuild=True`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if faces not in FACE_POLICIES:
        raise ValueError(f"faces must be one of {FACE_POLICIES}, got {faces!r}")
    start = time.perf_counter()
    index_dir = Path(index_dir).expanduser().resolve()
    scan = scan_folder(source_dir)
    report = BuildReport(str(scan.root), str(index_dir), total_files=len(scan.files), ignored=scan.ignored)
    with build_lock(index_dir):
        prev = _load_previous(index_dir, embedder.card, rebuild=rebuild, settings=_settings(embedder, faces),
                              report=report)
        try:
            return _update(scan.root, scan.files, index_dir, embedder, prev, report, start, batch_size=batch_size,
                           strict=strict, faces=faces, workers=workers, progress=progress)
        finally:
            if prev.gallery is not None:
                prev.gallery.close()


def _update(root: Path, files: list[ScannedFile], index_dir: Path, embedder: EmbedderLike, prev: _Previous,
            report: BuildReport, start: float, *, batch_size: int, strict: bool, faces: str,
            workers: int | None, progress: Progress | None) -> BuildReport:
    plan = plan_update(files, prev.photos)
    if prev.gallery is not None:
        changes = _Changes(prev.gallery.faiss_index)
    else:
        changes = _Changes(faiss.index_factory(embedder.card.embedding_size, DEFAULT_INDEX_TYPE,
                                               faiss.METRIC_INNER_PRODUCT))
    for f in plan.unchanged:
        if prev.photos[f.path].identity != f.identity:  # the identity rule changed
            changes.put.append(_photo(f, prev.photos[f.path].sha256, prev.photos[f.path].n_faces))
    to_embed = list(plan.new)
    digests = _hash_files(plan.touched, root, workers, progress)
    for f in plan.touched:
        old = prev.photos[f.path]
        if digests[f.path] == old.sha256:  # touched, same bytes: keep the vectors
            changes.put.append(_photo(f, old.sha256, old.n_faces))
        else:
            to_embed.append(f)
    to_embed.sort(key=lambda f: f.path)
    report.unchanged = len(files) - len(to_embed)
    report.removed = len(plan.removed)
    changes.delete = plan.removed + [f.path for f in to_embed if f.path in prev.photos]
    old_faces = prev.gallery.store.faces_of(changes.delete) if prev.gallery is not None else {}
    changes.remove_ids = [sf.id for path in changes.delete for sf in old_faces.get(path, [])]
    reusable: dict[str, str] = {}  # sha256 -> path of an outgoing photo with that content
    if prev.manifest is not None and prev.manifest.index_type in _EXACT_RECONSTRUCT:
        reusable = {prev.photos[p].sha256: p for p in changes.delete}
    report.seconds["scan"] = time.perf_counter() - start

    t = time.perf_counter()
    next_id = _embed(root, to_embed, embedder, prev, changes, report, old_faces, reusable, batch_size=batch_size,
                     strict=strict, faces=faces, workers=workers, progress=progress)
    report.seconds["embed"] = time.perf_counter() - t
    report.images_per_second = len(to_embed) / report.seconds["embed"] if to_embed else 0.0

    if changes.vectors.ntotal == len(changes.remove_ids):
        raise DatasetError(_nothing_indexed(root, report))
    t = time.perf_counter()
    if changes.delete or changes.put or prev.manifest is None or _settings_changed(prev.manifest, root, embedder):
        _save(index_dir, root, embedder, prev, changes, report, next_id=next_id, faces=faces)
    else:
        report.generation = prev.manifest.generation
        report.vectors, report.photos, report.identities = (prev.manifest.count, prev.manifest.photos,
                                                             prev.manifest.identities)
    report.seconds["save"] = time.perf_counter() - t
    return report


def _embed(root: Path, to_embed: list[ScannedFile], embedder: EmbedderLike, prev: _Previous, changes: _Changes,
           report: BuildReport, old_faces: dict[str, list[StoredFace]], reusable: dict[str, str], *,
           batch_size: int, strict: bool, faces: str, workers: int | None, progress: Progress | None) -> int:
    """Read and embed `to_embed` into `changes`; returns the next free id."""
    next_id = prev.next_id
    done = 0
    if progress is not None and to_embed:
        progress("embed", 0, len(to_embed))

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("embed", done, len(to_embed))

    for batch in embed_photos([root / f.path for f in to_embed], embedder, batch_size=batch_size, policy=faces,
                              reusable=frozenset(reusable), workers=workers, on_batch=advance):
        for r in batch:
            file = to_embed[r.position]
            if r.error is not None:
                if strict:
                    raise r.error
                report.skipped.append((file.path, r.error.reason))
                continue
            if r.reuse:
                _take_over(r, reusable[r.sha256], prev, old_faces)
                report.reused += 1
            if file.path in prev.photos:
                report.updated += 1
            else:
                report.added += 1
            report.no_face += r.n_faces == 0
            report.multi_face += r.n_faces > 1
            ids = np.arange(next_id, next_id + len(r.kept), dtype=np.int64)
            next_id += len(r.kept)
            changes.put.append(_photo(file, r.sha256, r.n_faces))
            changes.faces.extend((file.path, StoredFace(int(i), pos, box)) for i, (pos, box) in zip(ids, r.kept))
            if len(ids):
                changes.vectors.add_with_ids(np.ascontiguousarray(r.vectors, dtype=np.float32), ids)
                changes.added += len(ids)
    return next_id


def _take_over(r: PhotoFaces, source: str, prev: _Previous, old_faces: dict[str, list[StoredFace]]) -> None:
    """Give `r` the faces and vectors stored for `source`, a photo with the same bytes."""
    stored = old_faces.get(source, [])
    r.n_faces = prev.photos[source].n_faces
    r.kept = [(sf.face, sf.box) for sf in stored]
    d = prev.manifest.dim
    r.vectors = np.stack([prev.gallery.faiss_index.reconstruct(sf.id) for sf in stored]).astype(np.float32) \
        if stored else np.empty((0, d), np.float32)


def _save(index_dir: Path, root: Path, embedder: EmbedderLike, prev: _Previous, changes: _Changes,
          report: BuildReport, *, next_id: int, faces: str) -> None:
    """Write the changed files as a new generation and make it current."""
    generation = max(prev.last_generation, _last_generation_on_disk(index_dir)) + 1
    vectors_name, metadata_name = generation_names(generation)
    card = embedder.card
    vectors = changes.vectors
    if changes.remove_ids or changes.added or prev.gallery is None:
        if changes.remove_ids:
            vectors.remove_ids(np.asarray(changes.remove_ids, dtype=np.int64))
        write_vectors(vectors, index_dir / vectors_name)
    else:
        vectors_name = prev.manifest.vectors_file
    if changes.delete or changes.put or prev.gallery is None:
        store = MetadataStore.create(index_dir / metadata_name,
                                     copy_of=prev.gallery.store.path if prev.gallery is not None else None)
        try:
            store.delete_photos(changes.delete)
            store.put_photos(changes.put)
            store.add_faces(changes.faces)
            n_faces, n_photos, n_identities = store.counts()
        except BaseException:
            store.close()  # the file is named by no manifest: the next save removes it
            raise
        store.close_synced()
    else:  # only settings (paths, model card thresholds) changed
        metadata_name = prev.manifest.metadata_file
        n_faces, n_photos, n_identities = prev.gallery.store.counts()
    if n_faces != vectors.ntotal:  # internal invariant: metadata rows mirror the vectors
        raise AssertionError(f"build produced {vectors.ntotal} vectors but {n_faces} metadata rows")
    manifest = Manifest(
        generation=generation, vectors_file=vectors_name, metadata_file=metadata_name, dim=card.embedding_size,
        count=int(vectors.ntotal), photos=n_photos, identities=n_identities, next_id=next_id, model_card=card,
        model_dir=str(Path(embedder.model_dir).expanduser().resolve()), source_dir=str(root),
        build=_settings(embedder, faces), index_type=DEFAULT_INDEX_TYPE,
        created=prev.manifest.created if prev.manifest is not None and not report.rebuilt else utc_now())
    commit(index_dir, manifest)
    report.generation, report.written = generation, True
    report.vectors, report.photos, report.identities = manifest.count, n_photos, n_identities


def _settings(embedder: EmbedderLike, faces: str) -> dict:
    """The build settings a manifest records: a change in any of them changes every photo's vectors."""
    return {"faces": faces, "crops": embedder.crop_method}


def _load_previous(index_dir: Path, card: ModelCard, *, rebuild: bool, settings: dict,
                   report: BuildReport) -> _Previous:
    if not (index_dir / MANIFEST_FILE).exists():
        return _Previous(last_generation=_last_generation_on_disk(index_dir))
    fresh = _Previous(last_generation=_last_generation_on_disk(index_dir))
    try:
        m = read_manifest(index_dir)
        fresh.next_id = m.next_id  # ids stay unique across rebuilds
        fresh.last_generation = max(fresh.last_generation, m.generation)
        if not rebuild:
            m.check_model(card, what="build", fix="pass --rebuild to replace the index, or build with the "
                                                  f"model it was made with ({m.model_dir})")
        # A new face policy or crop method (e.g. --aligned, or a facesearch that aligns differently)
        # changes every photo: embed them all again. Indexes from before "crops" was recorded too.
        if rebuild or {"faces": "largest"} | m.build != settings:
            report.rebuilt = True
            return fresh
        gallery = GalleryIndex.open(index_dir)
    except IndexFormatError as e:
        if not rebuild:
            raise IndexFormatError(f"{e} (or pass --rebuild to replace it)") from e
        report.rebuilt = True
        return fresh
    m = gallery.manifest
    return _Previous(manifest=m, gallery=gallery, photos=gallery.store.photos(), next_id=m.next_id,
                     last_generation=m.generation)


def _hash_files(files: list[ScannedFile], root: Path, workers: int | None,
                progress: Progress | None) -> dict[str, str | None]:
    """sha256 of each file (None if it cannot be read: it will be re-embedded and skipped then)."""
    def digest(f: ScannedFile) -> str | None:
        try:
            return sha256_file(root / f.path)
        except OSError:
            return None

    out: dict[str, str | None] = {}
    if not files:
        return out
    if progress is not None:
        progress("hash", 0, len(files))
    with ThreadPoolExecutor(max_workers=workers or reader_threads()) as pool:
        for i, (f, sha) in enumerate(zip(files, pool.map(digest, files)), 1):
            out[f.path] = sha
            if progress is not None and (i % 64 == 0 or i == len(files)):
                progress("hash", i, len(files))
    return out


def _photo(f: ScannedFile, sha256: str, n_faces: int) -> Photo:
    return Photo(f.path, f.identity, f.size, f.mtime_ns, sha256, n_faces)


def _settings_changed(m: Manifest, root: Path, embedder: EmbedderLike) -> bool:
    model_dir = str(Path(embedder.model_dir).expanduser().resolve())
    return m.source_dir != str(root) or m.model_dir != model_dir or m.model_card != embedder.card


def _last_generation_on_disk(index_dir: Path) -> int:
    numbers = [int(m.group(1)) for p in index_dir.glob("gen-*") if (m := re.match(r"gen-(\d+)\.", p.name))]
    return max(numbers, default=0)


def _nothing_indexed(root: Path, report: BuildReport) -> str:
    parts = []
    if report.skipped:
        path, reason = report.skipped[0]
        parts.append(f"{len(report.skipped)} unreadable (first: {path}: {reason})")
    if report.no_face:
        parts.append(f"{report.no_face} with no face")
    why = ", ".join(parts) or "no photos left"
    return (f"no face vectors could be made from the {report.total_files} images in '{root}': {why}; "
            "nothing was written and any previous index is unchanged - fix or replace the photos and run again")
