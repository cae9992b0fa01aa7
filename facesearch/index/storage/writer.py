"""Writing an index: one writer at a time, every commit a new generation that costs what changed.

`IndexWriter` is the only way anything changes an index (a folder build, an ingest of embedding
shards, an enrolment through the service, a compaction). It holds the index's lock, stages
changes, and `commit()` writes them in the order `facesearch.index.storage.generation` describes: a new segment for
the new vectors, a new tombstone file when faces were removed, the changed metadata rows (one
SQLite transaction), then the manifest swap. Existing segments are never rewritten by a commit;
merging them is a separate commit of its own (`merge`, chosen by `plan_merge`, or `compact`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from facesearch.embedder.core.errors import IndexBusyError, IndexFormatError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.storage.gallery import GalleryIndex, check_counts, read_tombstones
from facesearch.index.storage.generation import MERGE_LOCK_FILE, build_lock, commit, maintenance_lock
from facesearch.index.storage.manifest import (
    MANIFEST_FILE,
    IndexPolicy,
    Manifest,
    read_manifest,
    read_manifest_data,
    rebuild_hint,
    tombstone_name,
    utc_now,
)
from facesearch.index.storage.merging import (
    DEAD_SHARE,
    MERGE_FACTOR,
    MIN_APPROXIMATE,
    build_merge,
    check_consistent,
    choose_kind,
    cosine_threshold,
    dead_counts,
    install_merge,
    plan_merge,
    record_generation,
    write_ids,
)
from facesearch.index.storage.segments import Segment, SegmentInfo, Spool, gather_vectors, write_segment
from facesearch.index.storage.store import (
    Exclusion,
    IndexStore,
    PersonFace,
    Photo,
    StoredFace,
    StoreWrite,
    metadata_name,
)

__all__ = ["DEAD_SHARE", "MERGE_FACTOR", "MIN_APPROXIMATE", "CommitResult", "IndexWriter", "plan_merge"]


class Calibrator(Protocol):
    """What a writer asks about the open-set calibration (`facesearch.index.openset.commit.CommitCalibration`)."""

    def wants(self, previous: dict | None, fpir: float | None) -> bool: ...

    def at_commit(self, manifest: Manifest, open_view: Callable[[], GalleryIndex], *, requested_fpir: float | None,
                  force: bool, given: dict | None, defer: bool = False) -> tuple[dict | None, dict]: ...


@dataclass
class CommitResult:
    """What a commit did."""

    generation: int
    written: bool  # False when nothing had changed and no generation was written
    faces: int = 0
    photos: int = 0
    identities: int = 0
    vectors_added: int = 0  # new vectors, in a new segment
    faces_removed: int = 0  # vectors newly tombstoned
    merged: list[int] = field(default_factory=list)  # segments merged by the automatic merge that followed
    seconds: dict[str, float] = field(default_factory=dict)
    calibration: dict | None = None  # what the commit did about the open-set calibration (facesearch.index.openset.open_set)


class IndexWriter:
    """Stages changes to an index and commits them as one new generation. Use `IndexWriter.open`.

    Reads (`photos`, `faces_of`, `vectors`) see the committed generation plus nothing staged.
    """

    def __init__(self, index_dir: Path, manifest: Manifest, store: IndexStore, segments: list[Segment],
                 tombstones: np.ndarray):
        self.index_dir = index_dir
        self.manifest = manifest  # the committed generation (its counts, segments, settings)
        self.store = store
        self.segments = segments
        self.tombstones = tombstones
        self._reset()

    def _reset(self) -> None:
        # Staged metadata edits go straight into one SQLite transaction of the next generation (its rows
        # invisible to readers until the commit), so staging millions of faces holds no Python objects.
        self._write: StoreWrite | None = None
        self._removed: set[int] = set()  # ids whose last staged edit removed them
        self._spool = Spool(self.index_dir, self.manifest.next_segment, self.manifest.dim)
        self._next_id = self.manifest.next_id
        # A calibration asked for (`request_calibration`) stays asked for across an in-place merge,
        # which commits without the calibrator: only a commit settles it.
        self._settings_changed = self._calibration_pending

    def _edits(self) -> StoreWrite:
        """The open transaction of the next generation (opened on the first staged edit)."""
        if self._write is None:
            self.store.generation = self.manifest.generation + 1
            self._write = self.store.write().__enter__()
        return self._write

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def open(cls, index_dir: str | os.PathLike, *, card: ModelCard, model_dir: str | os.PathLike,
             source_dir: str | os.PathLike | None = None, build: dict | None = None,
             policy: IndexPolicy | None = None, rebuild: bool = False, wait: float = 0.0,
             calibrator: Calibrator | None = None, defer_calibration: bool = False) -> Iterator[IndexWriter]:
        """Lock `index_dir` and open it for writing (creating an empty index when there is none).

        Args:
            index_dir: the index directory.
            card: the model whose vectors go in; must be the index's model unless `rebuild`.
            model_dir: that model's folder (recorded; `query` finds the model there).
            source_dir: the gallery folder folder photos are relative to (None keeps the recorded one).
            build: settings every vector depends on (face policy, crop method); None keeps the recorded ones.
            policy: index type, memory budget, raw vector dtype; None keeps the recorded one.
            rebuild: start from an empty index (ids still continue after the old ones).
            wait: seconds to wait for another writer.
            calibrator: what each commit asks about the open-set calibration (None: nothing; the
                stored estimate is carried as it is). `facesearch.index.open_writer` passes the
                index's own (`facesearch.index.openset.commit.COMMIT_CALIBRATION`).
            defer_calibration: a commit whose calibration needs a search keeps the previous estimate and
                says "deferred"; the caller computes it outside the write lock
                (`facesearch.index.openset.commit.calibrate_beside_writers`; the service does).

        Raises:
            IndexBusyError: another writer holds the index.
            IndexMismatchError: the index was built with another model (and not `rebuild`).
            IndexFormatError: the index is damaged (and not `rebuild`).
        """
        index_dir = Path(index_dir).expanduser().resolve()
        with build_lock(index_dir, wait=wait):
            writer = cls._open_locked(index_dir, card, Path(model_dir).expanduser().resolve(),
                                      None if source_dir is None else Path(source_dir).expanduser().resolve(),
                                      build, policy, rebuild)
            writer.calibrator = calibrator
            writer.defer_calibration = defer_calibration
            try:
                yield writer
            finally:
                writer.close()

    @classmethod
    def _open_locked(cls, index_dir: Path, card: ModelCard, model_dir: Path, source_dir: Path | None,
                     build: dict | None, policy: IndexPolicy | None, rebuild: bool) -> IndexWriter:
        previous = None
        if (index_dir / MANIFEST_FILE).exists():
            from facesearch.index.storage.upgrade import upgrade_if_old

            try:
                if not rebuild:
                    upgrade_if_old(index_dir)
                previous = read_manifest(index_dir)
            except IndexFormatError as e:
                if not rebuild:
                    raise IndexFormatError(f"{e} (or pass --rebuild to replace it)") from e
                previous = None
        if previous is not None and not rebuild:
            previous.check_model(card, what="build", fix="pass --rebuild to replace the index, or build with the "
                                                         f"model it was made with ({previous.model_dir})")
            writer = cls._load(index_dir, previous)
        else:
            writer = cls._fresh(index_dir, card, previous)
        writer.set_settings(card=card, model_dir=model_dir, source_dir=source_dir, build=build, policy=policy)
        return writer

    @classmethod
    def _load(cls, index_dir: Path, manifest: Manifest) -> IndexWriter:
        hint = rebuild_hint(index_dir, manifest.source_dir)
        try:
            segments = [Segment.open(index_dir, info, manifest.dim) for info in manifest.segments]
            tombstones = read_tombstones(index_dir, manifest)
            store = IndexStore.open_writer(index_dir / manifest.metadata_file, manifest.generation)
        except FileNotFoundError as e:
            raise IndexFormatError(f"index file '{e.args[0]}' named by the manifest is missing - {hint} "
                                   "(pass --rebuild to replace the index)") from None
        except IndexFormatError as e:
            raise IndexFormatError(f"{e} - {hint} (pass --rebuild to replace the index)") from e
        try:
            check_counts(store, manifest, hint + " (pass --rebuild to replace the index)")
        except BaseException:
            store.close()
            raise
        return cls(index_dir, manifest, store, segments, tombstones)

    @classmethod
    def _fresh(cls, index_dir: Path, card: ModelCard, previous: Manifest | None) -> IndexWriter:
        """An empty generation over a new metadata file; counters continue after any previous index."""
        counters = _counters_on_disk(index_dir)
        generation = max(counters["generation"], previous.generation if previous else 0)
        next_id = max(counters["next_id"], previous.next_id if previous else 0)
        next_segment = max(counters["next_segment"], previous.next_segment if previous else 0)
        name = metadata_name(generation + 1)
        (index_dir / name).unlink(missing_ok=True)  # a leftover of a crashed first build
        for side in ("-wal", "-shm"):
            (index_dir / (name + side)).unlink(missing_ok=True)
        store = IndexStore.create(index_dir / name, base=generation)
        manifest = Manifest(generation=generation, dim=card.embedding_size, segments=[], tombstones=None, dead=0,
                            faces=0, photos=0, identities=0, next_id=next_id, next_segment=next_segment,
                            model_card=card, model_dir="", source_dir="", metadata_file=name,
                            created=utc_now())
        writer = cls(index_dir, manifest, store, [], np.empty(0, np.int64))
        writer._fresh_store = True
        return writer

    _fresh_store = False

    def set_settings(self, *, card: ModelCard | None = None, model_dir: Path | None = None,
                     source_dir: Path | None = None, build: dict | None = None,
                     policy: IndexPolicy | None = None) -> None:
        """Record new settings; a change is written by the next commit even with nothing else staged."""
        m = self.manifest
        new = replace(m, model_card=card or m.model_card, model_dir=str(model_dir) if model_dir else m.model_dir,
                      source_dir=str(source_dir) if source_dir else m.source_dir,
                      build=build if build is not None else m.build, policy=policy or m.policy)
        if (new.model_card, new.model_dir, new.source_dir, new.build, new.policy) != \
                (m.model_card, m.model_dir, m.source_dir, m.build, m.policy):
            self._staged_manifest = new
            self._settings_changed = True

    def set_people(self, params: dict | None) -> None:
        """Record the parameters the people were grouped with (`Manifest.people`); written by the next commit."""
        if self._target.people != params:
            self._staged_manifest = replace(self._target, people=params)
            self._settings_changed = True

    @property
    def _target(self) -> Manifest:
        return getattr(self, "_staged_manifest", None) or self.manifest

    def close(self) -> None:
        if self._write is not None:  # staged but never committed: nothing of it stays
            self._write.__exit__(RuntimeError, None, None)
            self._write = None
        self._spool.discard()
        self.store.close()

    # --- reading the committed generation --------------------------------------------------

    @property
    def fresh(self) -> bool:
        """Whether this writer starts from an empty index (a first build or a rebuild)."""
        return self._fresh_store

    def photos(self, source: str | None = "folder") -> dict[str, Photo]:
        return self.store.photos(source)

    def faces_of(self, paths) -> dict[str, list[StoredFace]]:
        return self.store.faces_of(paths)

    def ids_of_identity(self, identity: str) -> list[int]:
        return self.store.ids_of_identity(identity)

    def photos_of_identity(self, identity: str) -> list[Photo]:
        return self.store.photos_of_identity(identity)

    def exclusions(self) -> list[Exclusion]:
        """Folder photos and faces removed through the service (`IndexStore.exclusions`)."""
        return self.store.exclusions()

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of committed live `ids`, `(n, d)` float32, in order (KeyError if one is absent)."""
        return gather_vectors(self.segments, self.tombstones, ids, self.manifest.dim)

    # --- staging ---------------------------------------------------------------------------

    def add_photo(self, photo: Photo, faces: Sequence[tuple[int, tuple | None]], vectors: np.ndarray) -> list[int]:
        """Stage a photo (replacing any live one at its path's metadata) and new vectors for its faces.

        Args:
            photo: the photo's metadata row.
            faces: (position among the photo's faces, box or None) per vector.
            vectors: `(len(faces), d)` float32, rows L2-normalised.

        Returns:
            The ids given to the new vectors.
        """
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(faces), self.manifest.dim)
        ids = np.arange(self._next_id, self._next_id + len(faces), dtype=np.int64)
        self._next_id += len(faces)
        if len(ids):
            self._spool.append(ids, vectors, photo.identity)
        self._stage_faces(photo, [StoredFace(int(i), pos, box) for i, (pos, box) in zip(ids, faces)])
        return ids.tolist()

    def keep_faces(self, photo: Photo, faces: Sequence[StoredFace]) -> None:
        """Stage a photo whose faces reuse vectors already stored (same ids; e.g. a moved photo).

        The ids must be removed from their old photo first, in this same commit (`remove_photos`).
        """
        self._stage_faces(photo, list(faces))

    def _stage_faces(self, photo: Photo, faces: list[StoredFace]) -> None:
        edits = self._edits()
        edits.put_photo(photo)
        edits.add_faces((photo.path, f) for f in faces)
        self._removed.difference_update(f.id for f in faces)

    def put_photo(self, photo: Photo) -> None:
        """Stage a metadata-only change of a live photo (size, mtime, identity); its faces stay."""
        self._edits().put_photo(photo)

    def remove_photos(self, paths: Sequence[str]) -> None:
        """Stage the removal of photos and their faces (in staging order: before a photo is put again)."""
        if paths:
            self._removed.update(self._edits().remove_photos(paths))

    def remove_faces(self, ids: Sequence[int]) -> None:
        """Stage the removal of single faces by id."""
        if ids:
            self._removed.update(self._edits().remove_faces([int(i) for i in ids]))

    def put_people(self, rows: Sequence[tuple[int, int, str | None, bool]]) -> None:
        """Stage `(face id, person, name or None, fixed)` of faces of unlabelled photos (their people rows)."""
        if rows:
            self._edits().put_people(list(rows))

    def person_faces(self) -> list[PersonFace]:
        """The committed faces of unlabelled photos with their people (`IndexStore.person_faces`)."""
        return self.store.person_faces()

    def exclude(self, rows: Sequence[Exclusion]) -> None:
        """Stage exclusions: folder photos (or faces) a folder build must not add back while unchanged."""
        if rows:
            self._edits().exclude(list(rows))

    def lapse_exclusions(self, paths: Sequence[str]) -> None:
        """Stage the end of the exclusions of `paths`."""
        if paths:
            self._edits().lapse_exclusions(list(paths))

    @property
    def staged(self) -> bool:
        return self._write is not None or self._settings_changed

    # --- committing ------------------------------------------------------------------------

    def commit(self, *, merge: bool = True) -> CommitResult:
        """Write everything staged as the next generation and make it current.

        Args:
            merge: afterwards, merge segments when the merge policy says it pays (its own commit).

        Returns:
            A `CommitResult`; `written` is False when nothing was staged (no generation is written).
        """
        if not self.staged:
            return CommitResult(self.manifest.generation, False, self.manifest.faces, self.manifest.photos,
                                self.manifest.identities)
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        target = self._target
        g = self.manifest.generation + 1
        segments = list(self.manifest.segments)
        number = self.manifest.next_segment
        new_segment = None
        if self._spool.count:
            ids, vectors = self._spool.arrays()
            kind, spec = self._choose(len(ids))
            new_segment = write_segment(self.index_dir, number, vectors, ids, dtype=target.policy.vector_dtype,
                                        kind=kind, spec=spec, labels=self._spool.labels(),
                                        threshold=cosine_threshold(target.calibration))
            segments.append(new_segment)
            number += 1
        seconds["segment"] = time.perf_counter() - t

        t = time.perf_counter()
        w = self._edits()  # a settings-only commit records its generation too
        self._write = None
        w.__exit__(None, None, None)  # COMMIT: the rows of generation g, invisible until the manifest names g
        removed = self._removed
        counts = w.counts
        seconds["metadata"] = time.perf_counter() - t

        t = time.perf_counter()
        newly_dead = np.setdiff1d(np.fromiter(removed, np.int64, len(removed)), self.tombstones)
        tombstones, tomb_file = self.tombstones, self.manifest.tombstones
        if len(newly_dead):
            tombstones = np.union1d(self.tombstones, newly_dead)
            tomb_file = tombstone_name(g)
            write_ids(self.index_dir / tomb_file, tombstones)
        manifest = replace(target, generation=g, segments=segments, tombstones=tomb_file, dead=len(tombstones),
                           faces=counts.faces, photos=counts.photos, identities=counts.identities,
                           next_id=self._next_id, next_segment=number, updated=utc_now())
        check_consistent(manifest)
        manifest, calibration = self._calibrate(manifest, tombstones, new_segment, seconds)
        commit(self.index_dir, manifest)
        seconds["commit"] = time.perf_counter() - t - seconds["calibration"]
        self._after_commit(manifest, tombstones, new_segment)
        result = CommitResult(g, True, counts.faces, counts.photos, counts.identities,
                              vectors_added=new_segment.count if new_segment else 0, faces_removed=len(newly_dead),
                              seconds=seconds, calibration=calibration)
        if merge and (plan := plan_merge(self.manifest, self._dead_counts())):
            t = time.perf_counter()
            try:
                merged = self.merge(plan)
            except IndexBusyError:  # a merge is being built beside us (a server's): it will do this one after
                return result
            result.merged = plan
            result.generation = merged.generation
            result.seconds["merge"] = time.perf_counter() - t
        return result

    def _after_commit(self, manifest: Manifest, tombstones: np.ndarray, new_segment: SegmentInfo | None) -> None:
        self.manifest = manifest
        self.tombstones = tombstones
        self._fresh_store = False
        if hasattr(self, "_staged_manifest"):
            del self._staged_manifest
        if new_segment is not None:
            self._spool.discard()
            self.segments.append(Segment.open(self.index_dir, new_segment, manifest.dim))
        self._reset()
        # Rows removed two generations ago are seen by no reader that opened since; the WAL is
        # folded back now and then so it does not grow without bound.
        self.store.purge(before=manifest.generation - 2)
        self.store.generation = manifest.generation + 1
        if manifest.generation % 16 == 0:
            self.store.checkpoint()

    # --- open-set calibration: a hook (facesearch.index.openset.commit), the writer knows no rules ------------

    calibrator: Calibrator | None = None  # set by `open`
    defer_calibration = False  # set by `open`
    calibration_fpir: float | None = None  # the target FPIR asked for; None keeps the stored one's (else 1%)
    _calibration_force = False
    _calibration_pending = False  # a requested calibration no commit has settled yet
    _calibration_given: dict | None = None

    def request_calibration(self, fpir: float | None = None, *, force: bool = False,
                            calibration: dict | None = None) -> None:
        """Ask the next commit to calibrate at `fpir` (when the stored target differs, or `force`), or to
        store `calibration` as given (measured on stranger photos).

        Raises:
            ValueError: the writer was opened without a calibrator (`calibrator=None`).
        """
        if self.calibrator is None:
            raise ValueError("this writer was opened without a calibrator: open it with "
                             "facesearch.index.open_writer (or calibrator=COMMIT_CALIBRATION)")
        self.calibration_fpir = fpir
        self._calibration_force = force or calibration is not None
        self._calibration_given = calibration
        if self._calibration_force or self.calibrator.wants(self.manifest.calibration, fpir):
            self._settings_changed = self._calibration_pending = True

    def _calibrate(self, manifest: Manifest, tombstones: np.ndarray, new_segment: SegmentInfo | None,
                   seconds: dict[str, float]) -> tuple[Manifest, dict | None]:
        """`manifest` with the calibration the calibrator says it carries (unchanged without a calibrator)."""
        t = time.perf_counter()
        if self.calibrator is None:
            seconds["calibration"] = 0.0
            return manifest, None

        def open_view() -> GalleryIndex:  # a read view of the generation being committed
            segments = self.segments + ([Segment.open(self.index_dir, new_segment, manifest.dim)] if new_segment else [])
            store = IndexStore.open_reader(self.index_dir / manifest.metadata_file, manifest.generation)
            return GalleryIndex(self.index_dir, manifest, segments, tombstones, store)

        calibration, outcome = self.calibrator.at_commit(
            manifest, open_view, requested_fpir=self.calibration_fpir, force=self._calibration_force,
            given=self._calibration_given, defer=self.defer_calibration)
        self._calibration_force, self._calibration_given, self._calibration_pending = False, None, False
        seconds["calibration"] = time.perf_counter() - t
        return replace(manifest, calibration=calibration), outcome

    def _choose(self, n: int) -> tuple[str, dict]:
        """The kind and spec of a new segment of `n` vectors, by the index's policy."""
        return choose_kind(n, self.manifest.dim, self._target.policy)

    def _dead_counts(self) -> dict[int, int]:
        """Tombstoned rows per segment number."""
        return dead_counts(self.segments, self.tombstones)

    # --- merging ---------------------------------------------------------------------------

    def merge(self, numbers: Sequence[int], *, wait: float = 0.0) -> CommitResult:
        """Merge segments `numbers` into one, dropping their removed rows, as a commit of its own, in place
        (this writer holds the write lock throughout; `facesearch.index.storage.merging.merge_segments`
        merges beside the writers instead, and is what a server and `facesearch compact` use).

        The metadata does not change (its rows already say which faces are live); readers of the
        previous generation keep their segments until they reopen. Settings staged by `set_settings`
        (e.g. a new policy) are built with and committed by it.

        Raises:
            IndexBusyError: another merge is being built (the merge lock, after `wait` seconds).
            ValueError: edits are staged (commit them first).
        """
        if self._write is not None or self._spool.count:
            raise ValueError("commit the staged edits before merging segments")
        chosen = [s for s in self.segments if s.info.number in set(numbers)]
        if not chosen:
            return CommitResult(self.manifest.generation, False)
        # The merge lock is only tried for a moment: a merge beside the writers takes it before the
        # write lock, so waiting for it here, holding the write lock, could deadlock.
        with maintenance_lock(self.index_dir, MERGE_LOCK_FILE, wait):
            target = self._target
            built = build_merge(self.index_dir, chosen, self.tombstones, target.policy, target.dim, store=self.store,
                                calibration=target.calibration)
            try:
                g = self.manifest.generation + 1
                manifest = install_merge(self.index_dir, target, g, built)
                assert manifest is not None, "the writer's own segments are current"
                counts = record_generation(self.store, g)
                manifest = replace(manifest, faces=counts.faces, photos=counts.photos, identities=counts.identities)
                check_consistent(manifest)
                commit(self.index_dir, manifest)
            finally:
                built.discard()
        replaced = set(numbers)
        self.segments = [s for s in self.segments if s.info.number not in replaced]
        new_info = manifest.segments[-1] if built.info is not None else None
        self._after_commit(manifest, read_tombstones(self.index_dir, manifest), None)
        if new_info is not None:
            self.segments.append(Segment.open(self.index_dir, new_info, manifest.dim))
        return CommitResult(g, True, counts.faces, counts.photos, counts.identities, merged=list(numbers))

    def compact(self, force: bool = False) -> CommitResult:
        """Merge every segment into one without removed rows (choosing its type for the whole size).

        Args:
            force: rewrite even a single segment with nothing removed (e.g. for a new index type).
        """
        if not force and len(self.manifest.segments) <= 1 and not self.manifest.dead:
            return CommitResult(self.manifest.generation, False, self.manifest.faces, self.manifest.photos,
                                self.manifest.identities)
        return self.merge([s.number for s in self.manifest.segments])


def _counters_on_disk(index_dir: Path) -> dict[str, int]:
    """Generation, id and segment counters a new index must start after (from any old manifest and files)."""
    out = {"generation": 0, "next_id": 0, "next_segment": 0}
    with contextlib.suppress(IndexFormatError):
        data = read_manifest_data(index_dir)
        out["generation"] = int(data.get("generation", 0))
        out["next_id"] = int(data.get("next_id", 0))
        out["next_segment"] = int(data.get("next_segment", 0))
    import re

    for entry in os.scandir(index_dir):
        if m := re.match(r"(gen|meta|tomb)-(\d+)\.", entry.name):
            out["generation"] = max(out["generation"], int(m.group(2)))
        elif m := re.match(r"\.?seg-(\d+)\.", entry.name):
            out["next_segment"] = max(out["next_segment"], int(m.group(1)) + 1)
    return out
