"""`facesearch.open(index)`: an index folder and the model that fills and searches it.

Fill it from `<person>/<photo>` folders (`add`, incremental like `facesearch build-index`), enrol or
remove one person at a time, and search photos against it. Each call sees the index's latest
commit, also one made by another process (a CLI build, a running service).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from facesearch.api.images import ImageInput, faces_in, photo_bytes
from facesearch.api.models import embedder_for
from facesearch.api.results import (
    Compaction,
    Enrolment,
    People,
    PeopleChange,
    Removal,
    SearchResult,
)
from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import FaceSearchError

FACE_CHOICES = ("all", "largest")


class Gallery:
    """A face index on disk, opened with the model that built it (or the one given).

    Args:
        index_dir: the index folder; it need not exist yet (the first `add` or `enrol` creates it).
        model: a model folder (`facesearch export`); None: $FACESEARCH_MODEL, else the index's
            recorded model, else the default model.
        aligned: take photos as ready-made face crops (no detection).
        min_face_size, face_threshold: detector options (None: its defaults).
        fpir: answer at this false-positive identification rate, from the index's calibration.
        wait: seconds a write waits for another writer before `IndexBusyError`.
    """

    def __init__(self, index_dir: str | os.PathLike, *, model: str | os.PathLike | None = None,
                 aligned: bool = False, min_face_size: int | None = None, face_threshold: float | None = None,
                 fpir: float | None = None, wait: float = 10.0):
        self.index_dir = Path(index_dir).expanduser()
        self.model = None if model is None else Path(model)
        self.options = {"aligned": aligned, "min_face_size": min_face_size, "face_threshold": face_threshold}
        self.fpir = fpir
        self.wait = wait
        self._reader = None  # the open GalleryIndex, reopened when the index moved on
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"facesearch.Gallery('{self.index_dir}')"

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the open index files (a later call opens them again)."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @property
    def exists(self) -> bool:
        from facesearch.index.storage.manifest import MANIFEST_FILE

        return (self.index_dir / MANIFEST_FILE).is_file()

    @property
    def embedder(self):
        """The `Embedder` this gallery embeds with (resolved now: the index may have been built meanwhile)."""
        return embedder_for(self.model, recorded=self._recorded_model(), **self.options)

    # --- writes --------------------------------------------------------------------------------

    def add(self, folder: str | os.PathLike, *, faces: str = "largest", strict: bool = False, rebuild: bool = False,
            batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, fpir: float | None = None,
            index_type: str | None = None, memory_budget: int | str | None = None, vector_dtype: str | None = None,
            target_recall: float | None = None, progress=None, labeled: bool = True):
        """Index a folder of `<identity>/<photo>` images (or `<identity>.jpg`); run again to add what is new
        and drop what is gone, as `facesearch build-index` does.

        With `labeled=False` the folder's photos have no identity (any layout): every face of each is
        stored without one, for `people()` to group and `name()` to name; a search answers such a face
        only once its person is named. Labelled and unlabelled photos share one index.

        Args:
            faces: the faces stored per photo: "largest" or "all" (unlabelled photos keep every face).
            strict: stop at the first unreadable file instead of skipping it (and counting it).
            rebuild: replace an index built with another model.
            fpir: the false-positive identification rate its "unknown" threshold is calibrated for.
            index_type, memory_budget, vector_dtype, target_recall: change the index's policy ("auto",
                "flat", "hnsw" or "ivf"; bytes or "8G"; "float32" or "float16"; the floor recall
                approximate segments are tuned to, beside identity agreement 0.999); None keeps the index's (see docs/large-galleries.md).
            progress: a callback (phase, done, total), e.g. to draw a progress bar.
            labeled: False: the photos are unlabelled (see above).

        Returns:
            The `BuildReport` (`to_dict()` is what `build-index --json` prints besides the model fields).

        Raises:
            DatasetError: the folder is missing or holds no image.
            IndexMismatchError: the index was built with another model (pass rebuild=True).
            IndexBusyError: another process is writing the index.
        """
        from facesearch.index import build_index

        if faces not in FACE_CHOICES:
            raise FaceSearchError(f"faces takes 'largest' or 'all', got '{faces}'")
        policy = self._policy(index_type, memory_budget, vector_dtype, target_recall)
        return build_index(Path(folder), self.index_dir, self.embedder, batch_size=batch_size, strict=strict,
                           rebuild=rebuild, faces=faces, workers=workers, progress=progress, fpir=fpir, policy=policy,
                           wait=self.wait, labeled=labeled)

    def add_embeddings(self, shards: str | os.PathLike, *, rebuild: bool = False, fpir: float | None = None,
                       index_type: str | None = None, memory_budget: int | str | None = None,
                       vector_dtype: str | None = None, target_recall: float | None = None, progress=None):
        """Fill or update the index from an embedding shard folder (`facesearch embed`, `facesearch.embed`
        rows written as shards) instead of photos: the same mirror rules as `add`, nothing embedded.

        Returns:
            The `BuildReport`.

        Raises:
            EmbeddingShardError: the folder is not a shard folder, or a row is malformed.
            IndexMismatchError: the shards' model is not the index's (pass rebuild=True).
        """
        from facesearch.api.models import model_for_vectors
        from facesearch.index.sync.ingest import build_index_from_embeddings

        policy = self._policy(index_type, memory_budget, vector_dtype, target_recall)
        return build_index_from_embeddings(Path(shards), self.index_dir, model_dir=model_for_vectors(self.model, Path(shards)),
                                           rebuild=rebuild, policy=policy, fpir=fpir, progress=progress)

    def compact(self, *, index_type: str | None = None, memory_budget: int | str | None = None,
                target_recall: float | None = None) -> Compaction:
        """Merge the segments into one, dropping removed faces, and choose and tune its type for the whole
        size (an index of an older format is upgraded first). A new policy given here is recorded.

        The merged segment is built beside any writer (a running server keeps enrolling and removing);
        the index's write lock is held only to swap it in, and faces removed meanwhile stay removed.

        Raises:
            IndexFormatError: there is no index here.
            IndexBusyError: another merge is running, or a writer held the index for `wait` seconds
                when the merged segment was ready.
        """
        import time

        from facesearch.index import read_manifest
        from facesearch.index.storage.generation import build_lock
        from facesearch.index.storage.manifest import read_manifest_data
        from facesearch.index.storage.merging import SWAP_WAIT, merge_segments
        from facesearch.index.storage.upgrade import upgrade_if_old

        start = time.perf_counter()
        index = self.index_dir.expanduser().resolve()
        read_manifest_data(index)  # a missing index is an error here, not a folder to create
        with build_lock(index, wait=self.wait):
            upgraded = upgrade_if_old(index)
        before = read_manifest(index)
        policy = before.policy.updated(index_type=index_type, memory_budget=memory_budget, target_recall=target_recall)
        result = merge_segments(index, everything=True, force=policy != before.policy, policy=policy,
                                wait=self.wait, lock_wait=max(self.wait, SWAP_WAIT))
        after = read_manifest(index)
        return Compaction(str(index), upgraded, result.written, after.generation, after.faces,
                          _segments(before), _segments(after) | {"specs": [s.spec for s in after.segments]},
                          round(time.perf_counter() - start, 3))

    def _policy(self, index_type, memory_budget, vector_dtype, target_recall):
        """The index's policy with these changes (None when none is asked: the writer keeps the index's)."""
        from facesearch.index import read_manifest
        from facesearch.index.storage.manifest import IndexPolicy

        if index_type is None and memory_budget is None and vector_dtype is None and target_recall is None:
            return None
        base = read_manifest(self.index_dir).policy if self.exists else IndexPolicy()
        return base.updated(index_type=index_type, memory_budget=memory_budget, vector_dtype=vector_dtype,
                            target_recall=target_recall)

    def enrol(self, image: ImageInput, identity: str, *, face: int | None = None,
              keep_photo: bool = True) -> Enrolment:
        """Enrol one face of `image` (the largest, or `face`: its place as `search` lists them) under `identity`.

        The photo is kept inside the index (its `photos/` store) unless `keep_photo` is False; the
        same face of the same photo again changes nothing (`new` is False).

        Raises:
            ImageReadError, NoFaceFoundError: the image cannot be read or shows no face.
            IdentityNameError: `identity` breaks the naming rule (`facesearch.index.sync.enrolment.IDENTITY_RULE`).
            FaceSearchError: `face` is not one of the photo's faces.
            IndexBusyError: another process is writing the index (after `wait` seconds).
        """
        from facesearch.embedder.core.boxes import box_tuple
        from facesearch.embedder.pipeline import select_faces
        from facesearch.index import open_writer
        from facesearch.index.storage.photostore import PhotoStore, extension_of, sha256_bytes
        from facesearch.index.sync.enrolment import FaceToEnrol, PhotoBytes, check_identity, stage_enrolment

        identity = check_identity(identity)  # NFC: the name as it is stored and found
        embedder = self.embedder
        name, crops = faces_in(embedder, image)
        if face is not None and not 0 <= face < len(crops):
            raise FaceSearchError(f"'{name}' shows {len(crops)} face(s): face must be 0 to {len(crops) - 1} "
                                  "(in the order search lists them)")
        pick = face if face is not None else select_faces(crops, "largest")[0]
        (vector,) = embedder.embed([crops[pick].image])
        _, data = photo_bytes(image)
        photo = PhotoBytes(data, sha256_bytes(data), extension_of(_format_of(data)))
        settings = {"faces": "largest", "crops": embedder.crop_method}
        with open_writer(self.index_dir, card=embedder.card, model_dir=embedder.model_dir,
                         build=None if self.exists else settings, wait=self.wait) as w:
            (done,) = stage_enrolment(w, identity, [FaceToEnrol(photo, pick, crops[pick].box, len(crops), vector)],
                                      PhotoStore(self.index_dir) if keep_photo else None)
            generation = w.commit().generation if done.new else w.manifest.generation
        return Enrolment(identity, done.id, done.path, pick, box_tuple(done.face.box),
                         len(crops), done.new, generation)

    def remove(self, identity: str) -> Removal:
        """Remove every photo of `identity`; photos of a gallery folder stay out of later `add`s.

        Raises:
            IdentityNotFoundError: the index has no photo of `identity`.
            IndexBusyError: another process is writing the index.
        """
        import unicodedata

        from facesearch.index.sync.enrolment import stage_identity_removal

        identity = unicodedata.normalize("NFC", identity)  # as enrol stored it
        return self._remove(lambda w: stage_identity_removal(w, identity))

    def remove_face(self, face_id: int) -> Removal:
        """Remove one stored face (its `id` in a search's matches); its photo goes with its last face.

        Raises:
            FaceNotFoundError: no live face has this id.
        """
        from facesearch.index.sync.enrolment import stage_face_removal

        return self._remove(lambda w: stage_face_removal(w, face_id))

    def remove_photo(self, path: str) -> Removal:
        """Remove one stored photo and its faces, by its path in the index (relative to the gallery
        folder, as a match's `path` gives it); a gallery-folder photo stays out of later `add`s.

        Raises:
            PhotoNotFoundError: no face was stored from a photo at `path`.
        """
        from facesearch.index.sync.enrolment import stage_photo_removal

        return self._remove(lambda w: stage_photo_removal(w, path))

    def _remove(self, stage) -> Removal:
        from facesearch.embedder.core.errors import IndexFormatError
        from facesearch.index import open_writer
        from facesearch.index.storage.photostore import PhotoStore
        from facesearch.index.sync.enrolment import forget_photos

        if not self.exists:
            raise IndexFormatError(f"'{self.index_dir}' is not an index yet: nothing to remove")
        embedder_card, model_dir = self._recorded_card()
        with open_writer(self.index_dir, card=embedder_card, model_dir=model_dir, wait=self.wait) as w:
            removed = stage(w)
            result = w.commit()
            forget_photos(w, PhotoStore(self.index_dir), removed.forget)
        return Removal(removed.identity, removed.faces_removed, removed.photos_removed, tuple(removed.excluded),
                       result.generation)

    # --- people: the faces of unlabelled photos ------------------------------------------------

    def people(self, *, recluster: bool = False, suggestions: bool = True) -> People:
        """Group the faces of unlabelled photos (`add(folder, labeled=False)`) into people, largest first.

        Faces added since the last call join the existing people or start new ones; the others stay
        where they are. `recluster` groups every face again, keeping the names given and the faces
        moved. Two faces of one photo are never in one person; a face that matches no one stays
        unclustered. A person that looks like a named identity carries it as a suggestion (with its
        score), never merged. The grouping is written into the index (one generation).

        Raises:
            IndexFormatError: there is no index here.
            PeopleError: the model has no pair calibration and there are too few faces to estimate
                the linking threshold from.
            IndexBusyError: another process is writing the index.
        """
        from facesearch.index.sync.people import read_people, stage_grouping

        def run(w):
            threshold, grouped = stage_grouping(w, recluster=recluster)
            generation = w.commit().generation
            found = read_people(w.store, w.vectors, w.manifest.model_card, suggestions=suggestions,
                                threshold=threshold, recorded=w.manifest.people)
            return People.from_view(found, grouped, generation)

        return self._people_write(run)

    def name(self, person: str, name: str) -> PeopleChange:
        """Name a person (`person-0001`): its faces become the identity `name`, which `search` answers and the
        open-set calibration counts; a person already of that name takes them in (a labelled identity
        of that name gets them as more faces).

        Raises:
            PersonNotFoundError: no such person. IdentityNameError: `name` is empty or not allowed.
            PeopleError: the person of that name has a face of one of this person's photos.
        """
        from facesearch.index.sync.people import stage_name

        return self._people_change("name", lambda w: stage_name(w, person, name))

    def merge(self, person: str, other: str) -> PeopleChange:
        """Put every face of `other` into `person` (a name either has is kept).

        Raises:
            PersonNotFoundError: either does not exist. PeopleError: the same person twice, two
            different names, or a photo with a face in each.
        """
        from facesearch.index.sync.people import stage_merge

        return self._people_change("merge", lambda w: stage_merge(w, person, other))

    def move(self, face_id: int, to: str | None = None) -> PeopleChange:
        """Move a face (its `id` in `people()`) out of its person (it stays alone, also after a recluster),
        or into person `to`.

        Raises:
            FaceNotFoundError: no face of an unlabelled photo has this id. PersonNotFoundError: `to`
            does not exist. PeopleError: nothing to move it out of, or `to` has a face of its photo.
        """
        from facesearch.index.sync.people import stage_move

        return self._people_change("move", lambda w: stage_move(w, face_id, to))

    def _people_change(self, action: str, stage) -> PeopleChange:
        def run(w):
            change = stage(w)
            return PeopleChange(action, change.person, change.name, change.faces, change.joined, w.commit().generation)

        return self._people_write(run)

    def _people_write(self, run):
        from facesearch.embedder.core.errors import IndexFormatError
        from facesearch.index import open_writer

        if not self.exists:
            raise IndexFormatError(f"'{self.index_dir}' is not an index yet: build one with "
                                   f"`facesearch build-index PHOTOS --unlabeled --index {self.index_dir}`")
        card, model_dir = self._recorded_card()
        with open_writer(self.index_dir, card=card, model_dir=model_dir, wait=self.wait) as w:
            return run(w)

    # --- reads ---------------------------------------------------------------------------------

    def search(self, image: ImageInput, *, k: int = 5, threshold: float | None = None, fpir: float | None = None,
               faces: str = "all") -> SearchResult:
        """Every face of `image` (or its largest, `faces="largest"`) with its `k` best identities and a verdict.

        A face's `identity` is None when no identity passes the threshold: `threshold` if given, else
        the index's calibration (at `fpir`, else at the rate it was calibrated for), else the model card's.

        Raises:
            ImageReadError, NoFaceFoundError: the image cannot be read or shows no face.
            IndexFormatError: there is no index here (yet), or it is damaged.
            IndexMismatchError: the model is not the one the index was built with.
            CalibrationError: `fpir` on an uncalibrated index.
        """
        from facesearch.embedder.pipeline import select_faces
        from facesearch.index.query import FaceSearcher

        if faces not in FACE_CHOICES:
            raise FaceSearchError(f"faces takes 'largest' or 'all', got '{faces}'")
        with self._lock:  # one open index per Gallery; threads take turns (open one Gallery per thread to overlap)
            reader = self._current()
            embedder = embedder_for(self.model, recorded=reader.model_dir, **self.options)
            searcher = FaceSearcher(reader, embedder, fpir=fpir if fpir is not None else self.fpir)
            name, crops = faces_in(embedder, image)
            if faces != "all":
                crops = [crops[i] for i in select_faces(crops, faces)]
            answer = {"image": name} | searcher.header(threshold) | {
                "faces": searcher.answer_crops(crops, k=k, threshold=threshold)}
        return SearchResult.from_dict(answer)

    def _current(self):
        """The open index at its latest commit (reopened when another write moved it on)."""
        from facesearch.index import GalleryIndex, read_manifest

        if self._reader is not None and read_manifest(self.index_dir).generation != self._reader.manifest.generation:
            self._reader.close()
            self._reader = None
        if self._reader is None:
            self._reader = GalleryIndex.open(self.index_dir)
        return self._reader

    def _recorded_model(self) -> Path | None:
        from facesearch.api.models import recorded_model

        return recorded_model(self.index_dir)

    def _recorded_card(self):
        """The index's own card and recorded model folder (a removal embeds nothing: no model needed)."""
        from facesearch.index import read_manifest

        m = read_manifest(self.index_dir)
        return m.model_card, m.model_dir


def _format_of(data: bytes) -> str | None:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except (UnidentifiedImageError, OSError):
        return None


def _segments(m) -> dict:
    return {"segments": len(m.segments), "stored": m.stored, "removed": m.dead, "types": [s.kind for s in m.segments]}
