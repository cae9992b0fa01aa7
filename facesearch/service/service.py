"""The face service: one embedder and one index, loaded once, answering requests from many threads.

The HTTP layer (`facesearch.service.app`, `facesearch.service.routes`) parses and checks requests and calls
these methods from its thread pool; everything here is plain blocking Python. Answers are dicts
with the content of the CLI's `--json` (through `facesearch.index.query.FaceSearcher`), plus where the
threshold came from and the generation that answered.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from pathlib import Path

import numpy as np
from fastapi import HTTPException
from PIL import Image

from facesearch.api.results import People, PeopleChange
from facesearch.api.verdicts import verify_faces
from facesearch.embedder.core.boxes import box_list
from facesearch.embedder.core.errors import (
    FaceNotFoundError,
    FaceSearchError,
    IdentityNotFoundError,
    ImageReadError,
    TooManyFacesError,
)
from facesearch.embedder.crop import crop_face
from facesearch.embedder.detect import DetectorConfig
from facesearch.embedder.images import read_image
from facesearch.embedder.pipeline import select_faces
from facesearch.embedder.runtime import Embedder, FaceCrop
from facesearch.index import open_writer
from facesearch.index.query import NO_FACE_HINT, FaceSearcher
from facesearch.index.storage.gallery import GalleryIndex
from facesearch.index.storage.manifest import MANIFEST_FILE
from facesearch.index.storage.store import StoredFace
from facesearch.index.sync.enrolment import FaceToEnrol, PhotoBytes
from facesearch.index.sync.people import read_people, stage_merge, stage_move, stage_name
from facesearch.service.config import ServiceConfig
from facesearch.service.snapshots import Snapshots
from facesearch.service.uploads import Upload
from facesearch.service.writes import Writes

log = logging.getLogger("facesearch.service")
THUMBNAIL_MARGIN = 0.25  # of the face box's size, added on each side of a thumbnail


class FaceService:
    """Use `FaceService.start(config)`; `close()` when the server stops."""

    def __init__(self, config: ServiceConfig, embedder: Embedder, snapshots: Snapshots, writes: Writes):
        self.config = config
        self.embedder = embedder
        self.card = embedder.card
        self.snapshots = snapshots
        self.writes = writes
        self.started = time.time()
        self.sweeping = None  # the photo store's start-up sweep (a thread), see `Writes.sweep_soon`

    @classmethod
    def start(cls, config: ServiceConfig, embedder: Embedder | None = None, *, warm: bool = True) -> FaceService:
        """Load the model and open the index (creating an empty one for this model if there is none).

        `warm`: run the model once and sweep the photo store (False: a check before starting workers).

        Raises:
            FaceSearchError: the model cannot be loaded, or the index is damaged, of another model
                or of another crop method.
        """
        started = time.perf_counter()
        if embedder is None:
            detector = dataclasses.replace(DetectorConfig(), **{k: v for k, v in {
                "min_face_size": config.min_face_size, "score_threshold": config.face_threshold}.items()
                if v is not None})
            embedder = Embedder(config.model_dir, threads=config.threads, aligned=config.aligned, detector=detector)
        index_dir = Path(config.index_dir).expanduser().resolve()
        if not (index_dir / MANIFEST_FILE).exists():
            create_empty_index(index_dir, embedder)
            log.info("no index at '%s': created an empty one for model %s", index_dir, embedder.card.describe())
        gallery = GalleryIndex.open(index_dir, card=embedder.card)
        try:
            check_crops(gallery, embedder)
        except BaseException:
            gallery.close()
            raise
        snapshots = Snapshots(gallery, check=lambda g: (g.check_model(embedder.card), check_crops(g, embedder)))
        writes = Writes(index_dir, embedder.card, embedder.model_dir, snapshots, keep_photos=config.keep_photos,
                        wait=config.write_wait)
        service = cls(config, embedder, snapshots, writes)
        if warm:
            service.sweeping = writes.sweep_soon()
            service.warm_up()
        log.info("model %s and index '%s' (%d faces, %d identities, generation %d) loaded in %.1f s",
                 embedder.card.name, index_dir, gallery.manifest.faces, gallery.manifest.identities,
                 gallery.manifest.generation, time.perf_counter() - started)
        return service

    def warm_up(self) -> None:
        """Build the detector and run every model once, so that the first request pays no start-up cost."""
        blank = np.full((160, 160, 3), 127, np.uint8)
        self.embedder.faces_in(blank)
        template = self.embedder.template
        if template is not None:  # e.g. the default model parses dlib's landmark predictor on its first face
            crops = [crop_face(np.full((template.height, template.width, 3), 127, np.uint8),
                               np.asarray(template.points, np.float32), template)]
        else:
            crops = [np.zeros((*self.embedder.input_size, 3), np.uint8)]
        self.embedder.embed(crops)

    def close(self) -> None:
        self.snapshots.close()

    # --- photos -> faces -----------------------------------------------------------------------

    def faces_of(self, uploads: list[Upload]) -> list[list[FaceCrop]]:
        """Every face of each photo, aligned (detection runs once for all of them).

        The request's work is bounded before anything is decoded: its photos' pixels together (from their
        headers) at most `max_request_pixels`; photos are decoded one at a time; a photo with more than
        `max_faces` faces is refused before any of them is aligned or embedded.

        Raises:
            HTTPException: 413 over the pixel budget; 422 when a photo cannot be decoded, shows no face or
                too many.
        """
        pixels = sum(u.width * u.height for u in uploads)
        if pixels > self.config.max_request_pixels:
            raise HTTPException(413, f"{len(uploads)} photos of {pixels:,} pixels together; one request may send "
                                     f"{self.config.max_request_pixels:,} (send fewer or smaller photos per request)")
        found = self.embedder.faces_in_files([(u.name, u.data) for u in uploads], max_faces=self.config.max_faces)
        for u, crops in zip(uploads, found):
            if isinstance(crops, (ImageReadError, TooManyFacesError)):
                raise HTTPException(422, f"photo '{u.name}': {crops.reason}")
            if not crops:
                raise HTTPException(422, f"no face found in photo '{u.name}': {NO_FACE_HINT}")
        return found

    # --- search --------------------------------------------------------------------------------

    def query(self, upload: Upload, *, k: int, threshold: float | None, fpir: float | None) -> dict:
        """Every face of the photo with its top-k identities and a verdict (`facesearch query --json`).

        The photo is embedded before a snapshot is taken, so a snapshot is held only while searching.
        A snapshot that several commits overtook meanwhile may have had the metadata rows it needs
        purged by a writer (`IndexWriter` keeps two generations); the search then runs once more
        on the newest one.
        """
        if threshold is not None and fpir is not None:
            raise HTTPException(422, "pass threshold or fpir, not both")
        (crops,) = self.faces_of([upload])
        vectors = self.embedder.embed([c.image for c in crops])
        for attempt in (1, 2):
            with self.snapshots.use() as gallery:
                searcher = FaceSearcher(gallery, self.embedder, fpir=fpir)
                decision = searcher.decision(threshold)  # CalibrationError (422): fpir on an uncalibrated index
                try:
                    answers = searcher.answer_vectors(vectors, k=k, threshold=threshold)
                except KeyError:
                    if attempt == 2:
                        raise
                    self.snapshots.refresh(force=True)
                    continue
                return {"image": upload.name, "index": str(gallery.index_dir), "model": self.card.name,
                        "threshold": decision.threshold, "threshold_source": decision.source,
                        "generation": gallery.manifest.generation,
                        "faces": [{"box": _box(c.box)} | a for c, a in zip(crops, answers)]}
        raise AssertionError("unreachable")

    def verify(self, first: Upload, second: Upload, *, threshold: float | None) -> dict:
        """Whether the largest faces of two photos are the same person, at the model card's pair threshold."""
        found = self.faces_of([first, second])
        return verify_faces(self.embedder, [(u.name, crops) for u, crops in zip((first, second), found)],
                            threshold=threshold).to_dict()

    # --- writes --------------------------------------------------------------------------------

    def enrol(self, identity: str, uploads: list[Upload], face: int | None) -> dict:
        """Enrol one face of each photo (`face`, else the largest) under `identity`, in one commit."""
        found = self.faces_of(uploads)
        picks = []
        for u, crops in zip(uploads, found):
            if face is not None and face >= len(crops):
                raise HTTPException(422, f"photo '{u.name}' shows {len(crops)} face(s): face must be 0 to "
                                         f"{len(crops) - 1} (in the order /v1/query lists them)")
            picks.append(face if face is not None else select_faces(crops, "largest")[0])
        vectors = self.embedder.embed([crops[i].image for crops, i in zip(found, picks)])
        faces = [FaceToEnrol(PhotoBytes(u.data, u.sha256, u.ext), i, crops[i].box, len(crops), v)
                 for u, crops, i, v in zip(uploads, found, picks, vectors)]
        enrolled, generation = self.writes.enrol(identity, faces)
        return {"identity": identity, "generation": generation, "photos_kept": self.config.keep_photos,
                "faces": [{"id": e.id, "image": u.name, "photo": e.path, "sha256": e.face.photo.sha256,
                           "face": e.face.position, "box": _box(e.face.box), "faces_found": e.face.faces_found,
                           "new": e.new} for u, e in zip(uploads, enrolled)]}

    def remove_identity(self, identity: str) -> dict:
        # Asked of the current snapshot first: a removal of someone who is not there answers 404 at once
        # instead of queueing for the write lock (45 such deletes behind a held lock made a bystander's
        # query wait 28.9 s). The write checks again under the lock.
        with self.snapshots.use() as g:
            if not g.store.photos_of_identity(identity) and not g.store.ids_of_identity(identity):
                raise IdentityNotFoundError(f"identity '{identity}' is not in the index")
        return dataclasses.asdict(self.writes.remove_identity(identity))

    def remove_face(self, face_id: int) -> dict:
        with self.snapshots.use() as g:  # as above
            try:
                g.store.records([face_id])
            except KeyError:
                raise FaceNotFoundError(f"face {face_id} is not in the index") from None
        return dataclasses.asdict(self.writes.remove_face(face_id))

    # --- reads ---------------------------------------------------------------------------------

    def identities(self, offset: int, limit: int) -> dict:
        with self.snapshots.use() as g:
            rows = g.store.identities(offset, limit)
            return {"identities": [{"identity": name, "photos": photos, "faces": faces} for name, photos, faces in rows],
                    "offset": offset, "limit": limit, "total": g.manifest.identities,
                    "generation": g.manifest.generation}

    def identity(self, identity: str) -> dict:
        with self.snapshots.use() as g:
            photos = g.store.photos_of_identity(identity)
            faces = g.store.faces_of([p.path for p in photos])
            # Faces of unlabelled photos whose person was named `identity`, under their own photos.
            mine = {f.id for stored in faces.values() for f in stored}
            named = g.records(sorted(set(g.store.ids_of_identity(identity)) - mine))
            for r in named:
                faces.setdefault(r.path, []).append(StoredFace(r.id, r.face, r.box))
            photos += sorted(g.store.photos_at({r.path for r in named}).values(), key=lambda p: p.path)
            if not photos:
                raise HTTPException(404, f"identity '{identity}' is not in the index")
            return {"identity": identity, "generation": g.manifest.generation,
                    "faces": sum(len(v) for v in faces.values()),
                    "photos": [{"path": p.path, "source": p.source, "sha256": p.sha256, "size": p.size,
                                "faces_found": p.n_faces,
                                "faces": [{"id": f.id, "face": f.face, "box": _box(f.box)} for f in faces.get(p.path, [])]}
                               for p in photos]}

    def thumbnail(self, face_id: int, size: int) -> bytes:
        """A JPEG of the face (its box with a margin) from the photo it was enrolled or indexed from.

        Raises:
            HTTPException: 404 when the face is not in the index or its photo is not on disk any more.
        """
        with self.snapshots.use() as g:
            try:
                (record,) = g.records([face_id])
            except KeyError:
                raise HTTPException(404, f"face {face_id} is not in the index") from None
            source_dir = g.manifest.source_dir
        stored = self.writes.photos.path_of(record.path)
        if stored is not None:
            file = stored
        elif record.path.startswith("/"):  # an unlabelled photo: indexed by its absolute path (a build's)
            file = Path(record.path)
        else:  # a gallery-folder photo: only ever inside the gallery folder
            root = Path(source_dir).resolve() if source_dir else None
            file = (root / record.path).resolve() if root is not None else None
            if file is None or not file.is_relative_to(root):
                raise HTTPException(404, f"the photo of face {face_id} is not in the gallery folder")
        try:
            image = read_image(file)
        except ImageReadError as e:
            raise HTTPException(404, f"the photo of face {face_id} cannot be read any more: {e.reason}") from None
        return _thumbnail(image, record.box, size)

    # --- people ----------------------------------------------------------------------------------

    def people(self, suggestions: bool = True, grouped: int = 0) -> dict:
        """The people of the current snapshot, largest first (`facesearch people --json`), and how many
        faces wait to be grouped (`group_people`)."""
        with self.snapshots.use() as g:
            view = read_people(g.store, g.vectors, g.card, suggestions=suggestions, recorded=g.manifest.people)
            return People.from_view(view, grouped, g.manifest.generation).to_dict() | {
                "pending": view.pending, "grouped": grouped, "threshold": view.threshold,
                "generation": g.manifest.generation}

    def group_people(self, recluster: bool) -> dict:
        grouped, _ = self.writes.group_people(recluster)
        return self.people(grouped=grouped)

    def name_person(self, person: str, name: str) -> dict:
        return self._people_change("name", lambda w: stage_name(w, person, name))

    def merge_people(self, person: str, other: str) -> dict:
        return self._people_change("merge", lambda w: stage_merge(w, person, other))

    def move_face(self, face_id: int, to: str | None) -> dict:
        return self._people_change("move", lambda w: stage_move(w, face_id, to))

    def _people_change(self, action: str, stage) -> dict:
        change, generation = self.writes.change_people(stage)
        return PeopleChange(action, change.person, change.name, change.faces, change.joined, generation).to_dict()

    def health(self) -> dict:
        g = self.snapshots.current
        problem = self.snapshots.problem
        if problem and self.config.api_keys:  # unauthenticated: say that, not what (messages name paths)
            problem = "a newer generation of the index cannot be answered from; GET /v1/stats (with a key) says why"
        return {"status": "degraded" if problem else "ok", "generation": g.manifest.generation, "detail": problem}

    def stats(self) -> dict:
        with self.snapshots.use() as g:
            m = g.manifest
            decision = FaceSearcher(g, card=self.card).decision()
            return {"faces": m.faces, "photos": m.photos, "identities": m.identities, "generation": m.generation,
                    "index": g.index_dir.name, "index_type": m.policy.index_type,  # a name: no server paths in answers
                    "segments": [{"kind": s.kind, "count": s.count} for s in m.segments], "removed_in_segments": m.dead,
                    "model": self.card.name, "dim": m.dim, "crop_method": self.embedder.crop_method,
                    "threshold": decision.threshold, "threshold_source": decision.source,
                    "decision": decision.to_dict(), "source_dir": Path(m.source_dir).name if m.source_dir else None,
                    "keep_photos": self.config.keep_photos, "auth": bool(self.config.api_keys),
                    "problem": self.snapshots.problem, "uptime_s": round(time.time() - self.started, 1)}


def create_empty_index(index_dir: Path, embedder: Embedder) -> None:
    """An index with no face yet, recording the model and the build settings a folder build would."""
    settings = {"faces": "largest", "crops": embedder.crop_method}  # what facesearch.index.sync.build records
    with open_writer(index_dir, card=embedder.card, model_dir=embedder.model_dir, build=settings) as w:
        w.commit()


def check_crops(gallery: GalleryIndex, embedder: Embedder) -> None:
    """Raise unless this server makes crops the way the index's vectors were made.

    Raises:
        FaceSearchError: the index records another crop method (e.g. built with --aligned).
    """
    recorded = (gallery.manifest.build or {}).get("crops")
    if recorded is not None and recorded != embedder.crop_method:
        raise FaceSearchError(f"index '{gallery.index_dir}' was built from crops made by '{recorded}'; this server "
                              f"makes '{embedder.crop_method}' - serve with the same --aligned setting it was built "
                              "with, or rebuild the index")


_box = box_list


def _thumbnail(image: np.ndarray, box, size: int) -> bytes:
    h, w = image.shape[:2]
    if box is not None:
        x1, y1, x2, y2 = box
        mx, my = (x2 - x1) * THUMBNAIL_MARGIN, (y2 - y1) * THUMBNAIL_MARGIN
        left, top = int(max(0, x1 - mx)), int(max(0, y1 - my))
        right, bottom = int(min(w, x2 + mx)), int(min(h, y2 + my))
        if right > left and bottom > top:
            image = image[top:bottom, left:right]
    img = Image.fromarray(image)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return out.getvalue()
