"""The service's writes: enrol, remove an identity, remove a face; one at a time, through `IndexWriter`.

Every write takes this process's write lock, then the index's own lock (`IndexWriter.open`: a CLI
build or another worker process may hold it; the write waits `write_wait` seconds, then 503),
stages its change and commits one generation. The commit is durable when it returns (segment
files fsynced, SQLite synchronous=FULL, atomic manifest swap) and the answer is sent after it,
so an acknowledged enrolment survives a crash. Queries keep answering from the snapshot they
hold; the new generation is made current before the write answers (read-your-writes).

Photos go into the photo store (fsynced) before the commit that names them and leave it after
the commit that removes the last row naming them (`facesearch.index.photostore`). Segment merges are not
done by the write itself: a background thread runs them after, so an enrolment never waits for one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import HTTPException

from facesearch.embedder.core.errors import FaceSearchError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.enrolled import exclusion_of
from facesearch.index.photostore import PhotoStore, enrolled_path, parse_enrolled_path
from facesearch.index.store import Photo
from facesearch.index.writer import CommitResult, IndexWriter, plan_merge
from facesearch.service.snapshots import Snapshots
from facesearch.service.uploads import Upload

log = logging.getLogger("facesearch.service")


@dataclass(frozen=True)
class FaceToEnrol:
    """One face of an uploaded photo, embedded, ready to be written."""

    upload: Upload
    position: int  # among the faces found in the photo (the order /v1/query lists them in)
    box: tuple[float, float, float, float] | None
    faces_found: int
    vector: np.ndarray  # (d,) float32, L2-normalised


@dataclass(frozen=True)
class Enrolled:
    face: FaceToEnrol
    id: int
    path: str
    new: bool  # False: this face of this photo was already enrolled under the identity (nothing written)


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
        self.last_commit: CommitResult | None = None

    @contextlib.contextmanager
    def _writer(self, wait: float | None = None) -> Iterator[IndexWriter]:
        wait = self.wait if wait is None else wait
        if not self._lock.acquire(timeout=wait):
            raise HTTPException(503, f"another write of this server is still running after {wait:g} s; retry",
                                headers={"Retry-After": "5"})
        try:
            # The recorded model folder stays as it is (this server may reach the same model elsewhere).
            model_dir = self.snapshots.current.manifest.model_dir or self.model_dir
            try:
                with IndexWriter.open(self.index_dir, card=self.card, model_dir=model_dir, wait=wait) as writer:
                    yield writer
            except FaceSearchError as e:
                if type(e) is FaceSearchError:  # the index's lock is held (by a CLI build, another worker)
                    raise HTTPException(503, f"{e} (waited {wait:g} s)", headers={"Retry-After": "10"}) from None
                raise
        finally:
            self._lock.release()
            if self._merge_wanted:  # after the lock is free: the merge takes it for a commit of its own
                self._merge_wanted = False
                self._merge_soon()

    def _committed(self, writer: IndexWriter) -> CommitResult:
        result = writer.commit(merge=False)
        self.last_commit = result
        self.snapshots.refresh(force=True)
        self._merge_wanted = True
        return result

    # --- enrol -----------------------------------------------------------------------------

    def enrol(self, identity: str, faces: list[FaceToEnrol]) -> tuple[list[Enrolled], int]:
        """Add `faces` under `identity` in one commit; returns them with their ids, and the generation."""
        out: list[Enrolled] = []
        with self._writer() as w:
            staged: dict[tuple[str, int], int] = {}
            for face in faces:
                up = face.upload
                path = enrolled_path(identity, up.sha256, up.ext)
                known = {f.face: f.id for f in w.faces_of([path]).get(path, [])}
                if face.position in known or (path, face.position) in staged:  # the same face again: no-op
                    out.append(Enrolled(face, known.get(face.position, staged.get((path, face.position))), path,
                                        False))
                    continue
                if self.keep_photos:
                    self.photos.put(up.data, up.ext, up.sha256)  # durable before the commit names it
                photo = Photo(path, identity, len(up.data), time.time_ns(), up.sha256, face.faces_found, source="api")
                (new_id,) = w.add_photo(photo, [(face.position, face.box)], face.vector[None, :])
                staged[(path, face.position)] = new_id
                out.append(Enrolled(face, new_id, path, True))
            generation = self._committed(w).generation if staged else w.manifest.generation
        return out, generation

    # --- remove ----------------------------------------------------------------------------

    def remove_identity(self, identity: str) -> Removal:
        """Remove every photo of `identity`; folder photos are also excluded from later folder builds.

        Raises:
            HTTPException: 404 when the identity has no photo.
        """
        with self._writer() as w:
            photos = w.photos_of_identity(identity)
            if not photos:
                raise HTTPException(404, f"identity '{identity}' is not in the index")
            paths = [p.path for p in photos]
            faces = sum(len(v) for v in w.faces_of(paths).values())
            w.remove_photos(paths)
            folder = [p for p in photos if p.source != "api"]
            w.exclude([exclusion_of(p) for p in folder])
            result = self._committed(w)
            self._forget_photos(w, [p for p in photos if p.source == "api"])
        return Removal(identity, faces, len(photos), [p.path for p in folder], result.generation)

    def remove_face(self, face_id: int) -> Removal:
        """Remove one face; its photo goes too when it was the photo's last face.

        Raises:
            HTTPException: 404 when no live face has this id.
        """
        with self._writer() as w:
            try:
                (record,) = w.store.records([face_id])
            except KeyError:
                raise HTTPException(404, f"face {face_id} is not in the index") from None
            photo = next(p for p in w.photos_of_identity(record.identity) if p.path == record.path)
            siblings = w.faces_of([photo.path]).get(photo.path, [])
            face = next(f for f in siblings if f.id == face_id)
            whole = len(siblings) == 1
            if whole:
                w.remove_photos([photo.path])
            else:
                w.remove_faces([face_id])
            excluded = []
            if photo.source != "api":
                w.exclude([exclusion_of(photo, None if whole else face)])
                excluded = [photo.path]
            result = self._committed(w)
            if whole and photo.source == "api":
                self._forget_photos(w, [photo])
        return Removal(record.identity, 1, int(whole), excluded, result.generation)

    def _forget_photos(self, writer: IndexWriter, photos: list[Photo]) -> None:
        """Delete stored files that no live enrolled photo names any more (after the commit)."""
        if not photos:
            return
        still = writer.store.live_sha256([p.sha256 for p in photos])
        for p in photos:
            parsed = parse_enrolled_path(p.path)
            if parsed is not None and p.sha256 not in still:
                self.photos.remove(p.sha256, parsed[2])

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
            except HTTPException:
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
        """Merge segments when the index's merge policy says so, as a commit of its own."""
        try:
            with self._writer() as w:
                dead = {s.info.number: int(np.isin(s.ids, w.tombstones).sum()) for s in w.segments} \
                    if len(w.tombstones) else {}
                plan = plan_merge(w.manifest, dead)
                if not plan:
                    return
                started = time.perf_counter()
                result = w.merge(plan)
                log.info("merged segments %s into one (generation %d) in %.2f s", plan, result.generation,
                         time.perf_counter() - started)
            self.snapshots.refresh(force=True)
        except HTTPException:
            pass  # another writer is busy: the next write tries again
        except Exception:
            log.exception("segment merge failed; the index is unchanged")
        finally:
            self._merging.clear()
