"""The service's writes: enrol, remove an identity, remove a face; one at a time, through `IndexWriter`.

Every write takes this process's write lock, then the index's own lock (`IndexWriter.open`: a CLI
build or another worker process may hold it; the write waits `write_wait` seconds, then 503),
stages its change and commits one generation. The commit is durable when it returns (segment
files fsynced, SQLite synchronous=FULL, atomic manifest swap) and the answer is sent after it,
so an acknowledged enrolment survives a crash. Queries keep answering from the snapshot they
hold; the new generation is made current before the write answers (read-your-writes).

Photos go into the photo store (fsynced) before the commit that names them and leave it after
the commit that removes the last row naming them (`facesearch.index.storage.photostore`). Segment merges are not
done by the write itself: a background thread builds them beside the writes, from the current snapshot,
and takes the index's write lock only to swap the merged segment in (`facesearch.index.storage.merging`),
so an enrolment waits for a merge at most for that swap. The same for the open-set calibration: a
commit that calls for a new estimate keeps the previous one, and a background thread computes it
from a snapshot and records it by a short commit (`facesearch.index.openset.commit.calibrate_beside_writers`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from facesearch.embedder.core.errors import IndexBusyError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index import open_writer
from facesearch.index.openset.commit import DEFERRED, calibrate_beside_writers
from facesearch.index.storage.merging import merge_segments
from facesearch.index.storage.photostore import PhotoStore
from facesearch.index.storage.writer import CommitResult, IndexWriter
from facesearch.index.sync.enrolment import (
    Enrolled,
    FaceToEnrol,
    forget_photos,
    stage_enrolment,
    stage_face_removal,
    stage_identity_removal,
)
from facesearch.index.sync.people import stage_grouping
from facesearch.service.snapshots import Snapshots

log = logging.getLogger("facesearch.service")


@dataclass(frozen=True)
class Removal:
    identity: str | None
    faces_removed: int
    photos_removed: int
    excluded: list[str]  # gallery-folder photos (or faces of them) a folder build now leaves out
    generation: int


class Writes:
    """Serialises the service's writes and runs merges in the background."""

    def __init__(self, index_dir: Path, card: ModelCard, model_dir: Path, snapshots: Snapshots, *,
                 keep_photos: bool, wait: float):
        self.index_dir = index_dir
        self.card = card
        self.model_dir = model_dir
        self.snapshots = snapshots
        self.photos = PhotoStore(index_dir)
        self.keep_photos = keep_photos
        self.wait = wait
        self._lock = threading.Lock()
        self._merging = threading.Event()
        self._merge_wanted = False
        self._calibrating = threading.Event()
        self._calibration_wanted = False
        self.last_commit: CommitResult | None = None

    @contextlib.contextmanager
    def _writer(self, wait: float | None = None) -> Iterator[IndexWriter]:
        wait = self.wait if wait is None else wait
        if not self._lock.acquire(timeout=wait):
            raise IndexBusyError(f"another write of this server is still running after {wait:g} s; retry")
        try:
            # The recorded model folder stays as it is (this server may reach the same model elsewhere).
            model_dir = self.snapshots.current.manifest.model_dir or self.model_dir
            try:
                with open_writer(self.index_dir, card=self.card, model_dir=model_dir, wait=wait,
                                 defer_calibration=True) as writer:
                    yield writer
            except IndexBusyError as e:  # the index's lock is held (by a CLI build, another worker)
                raise IndexBusyError(f"{e} (waited {wait:g} s)") from None
        finally:
            self._lock.release()
            if self._merge_wanted:  # after the lock is free: the merge takes it for a commit of its own
                self._merge_wanted = False
                self._merge_soon()
            if self._calibration_wanted:
                self._calibration_wanted = False
                self._calibrate_soon()

    def _committed(self, writer: IndexWriter) -> CommitResult:
        result = writer.commit(merge=False)
        self.last_commit = result
        self.snapshots.refresh(force=True)
        self._merge_wanted = True
        if (result.calibration or {}).get("action") == DEFERRED:
            self._calibration_wanted = True
        return result

    # --- enrol -----------------------------------------------------------------------------

    def enrol(self, identity: str, faces: list[FaceToEnrol]) -> tuple[list[Enrolled], int]:
        """Add `faces` under `identity` in one commit; returns them with their ids, and the generation."""
        with self._writer() as w:
            out = stage_enrolment(w, identity, faces, self.photos if self.keep_photos else None)
            generation = self._committed(w).generation if any(e.new for e in out) else w.manifest.generation
        return out, generation

    # --- remove ----------------------------------------------------------------------------

    def remove_identity(self, identity: str) -> Removal:
        """Remove every photo of `identity`; folder photos are also excluded from later folder builds.

        Raises:
            IdentityNotFoundError: the identity has no photo (404).
        """
        return self._remove(lambda w: stage_identity_removal(w, identity))

    def remove_face(self, face_id: int) -> Removal:
        """Remove one face; its photo goes too when it was the photo's last face.

        Raises:
            FaceNotFoundError: no live face has this id (404).
        """
        return self._remove(lambda w: stage_face_removal(w, face_id))

    def _remove(self, stage) -> Removal:
        with self._writer() as w:
            removed = stage(w)
            result = self._committed(w)
            forget_photos(w, self.photos, removed.forget)
        return Removal(removed.identity, removed.faces_removed, removed.photos_removed, removed.excluded,
                       result.generation)

    # --- people ----------------------------------------------------------------------------

    def group_people(self, recluster: bool = False) -> tuple[int, int]:
        """Group the faces of unlabelled photos not grouped yet (all with `recluster`); (faces placed, generation)."""
        with self._writer() as w:
            _, grouped = stage_grouping(w, recluster=recluster)
            generation = self._committed(w).generation if grouped else w.manifest.generation
        return grouped, generation

    def change_people(self, stage) -> tuple[object, int]:
        """A name, merge or move (`facesearch.index.sync.people.stage_*`) in one commit; (its change, generation)."""
        with self._writer() as w:
            change = stage(w)
            generation = self._committed(w).generation
        return change, generation

    # --- housekeeping ----------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Delete stored photos no live row names (left by a crash between a store write and its commit,
        or between a commit and the removal of the files it stopped naming). Holds the write lock."""
        if not self.photos.root.is_dir():
            return []
        with self._writer() as w:
            removed = self.photos.sweep(w.store.live_sha256(None))
        if removed:
            log.info("photo store: removed %d file(s) no enrolment names (left by an interrupted write)", len(removed))
        return removed

    def sweep_soon(self) -> threading.Thread:
        """`sweep` in a background thread (on a large store it lists every file): start-up does not wait."""
        def run():
            try:
                self.sweep()
            except IndexBusyError:
                log.info("the index is being written by another process; the photo store is swept next start")
            except Exception:
                log.exception("sweeping the photo store failed; nothing was lost")

        thread = threading.Thread(target=run, name="facesearch-sweep", daemon=True)
        thread.start()
        return thread

    def _merge_soon(self) -> None:
        if self._merging.is_set():
            return
        self._merging.set()
        threading.Thread(target=self._merge, name="facesearch-merge", daemon=True).start()

    def _merge(self) -> None:
        """Merge segments when the index's merge policy says so: built outside every write lock, swapped in
        by a short commit of its own (faces removed meanwhile stay removed)."""
        try:
            with self.snapshots.use() as snapshot:
                result = merge_segments(self.index_dir, snapshot=snapshot, lock_wait=max(self.wait, 60.0))
            if result.written:
                log.info("merged segments %s into one (generation %d): built in %.2f s, swapped in %.3f s",
                         result.merged, result.generation, result.seconds.get("build", 0.0),
                         result.seconds.get("swap", 0.0))
                self.snapshots.refresh(force=True)
        except IndexBusyError:
            pass  # another merge (a `facesearch compact`, another worker) is running: the next write tries again
        except Exception:
            log.exception("segment merge failed; the index is unchanged")
        finally:
            self._merging.clear()

    def _calibrate_soon(self) -> None:
        if self._calibrating.is_set():
            return  # the running one reads a snapshot newer than this commit's, or computes again
        self._calibrating.set()
        threading.Thread(target=self._calibrate, name="facesearch-calibrate", daemon=True).start()

    def _calibrate(self) -> None:
        """The open-set calibration the gallery now calls for, computed beside the writes."""
        try:
            outcome = calibrate_beside_writers(self.index_dir, lock_wait=max(self.wait, 60.0))
            if outcome["generation"] is not None:
                log.info("open-set calibration recorded (generation %d): %s", outcome["generation"], outcome["message"])
                self.snapshots.refresh(force=True)
        except IndexBusyError:
            pass  # another process calibrates: it records the estimate
        except Exception:
            log.exception("open-set calibration failed; the previous estimate is kept")
        finally:
            self._calibrating.clear()
