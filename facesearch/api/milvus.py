"""`facesearch.open("milvus://...")`: the door's `Gallery` on a gallery kept in Milvus.

The same calls as a folder gallery (`add`, `add_embeddings`, `enrol`, `remove`, `remove_face`,
`remove_photo`, `search`) and the same typed results; underneath, `facesearch.index.milvus`. The
token comes from `$FACESEARCH_MILVUS_TOKEN` or `$FACESEARCH_MILVUS_TOKEN_FILE`, never an argument
that a command line or a log would show. Not offered on Milvus (they raise `MilvusError`):
`compact` (Milvus compacts its own segments) and the people of unlabelled photos.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from facesearch.api.images import ImageInput, faces_in, photo_bytes
from facesearch.api.models import embedder_for
from facesearch.api.results import Enrolment, Removal, SearchResult
from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import FaceSearchError, MilvusError
from facesearch.index.milvus.address import milvus_token, parse_address

FACE_CHOICES = ("all", "largest")


class MilvusGallery:
    """A face gallery in a Milvus collection, opened with the model that built it (or the one given).

    Args:
        address: `milvus://HOST[:PORT]/[DB/]COLLECTION`, `milvus+tls://...` or `milvus-lite:PATH.db[#COLLECTION]`.
        model, aligned, min_face_size, face_threshold, fpir, wait: as `facesearch.api.gallery.Gallery`.

    Raises:
        MilvusError: the address is malformed (checked here; the server is first reached by a call).
    """

    def __init__(self, address: str, *, model: str | os.PathLike | None = None, aligned: bool = False,
                 min_face_size: int | None = None, face_threshold: float | None = None, fpir: float | None = None,
                 wait: float = 10.0):
        self.address = parse_address(str(address))
        self.index_dir = str(self.address)
        self.model = None if model is None else Path(model)
        self.options = {"aligned": aligned, "min_face_size": min_face_size, "face_threshold": face_threshold}
        self.fpir = fpir
        self.wait = wait
        self._reader = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"facesearch.MilvusGallery('{self.address}')"

    def __enter__(self) -> MilvusGallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @property
    def exists(self) -> bool:
        from facesearch.embedder.core.errors import IndexFormatError

        try:
            self.reader()
            return True
        except IndexFormatError:
            return False

    @property
    def embedder(self):
        return embedder_for(self.model, recorded=self._recorded_model(), **self.options)

    def reader(self):
        """The open `MilvusIndex`, moved to the latest commit (one small read per call)."""
        from facesearch.index.milvus.gallery import MilvusIndex

        if self._reader is None:
            self._reader = MilvusIndex.open(self.address, milvus_token())
        return self._reader.refresh()

    # --- writes --------------------------------------------------------------------------------------

    def add(self, folder: str | os.PathLike, *, faces: str = "largest", strict: bool = False, rebuild: bool = False,
            batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None, fpir: float | None = None,
            index_type: str | None = None, target_recall: float | None = None, progress=None,
            labeled: bool = True, memory_budget=None, vector_dtype=None):
        """Make the gallery mirror a folder of `<identity>/<photo>` images (as `Gallery.add`).

        Raises:
            MilvusError: `labeled=False`, `memory_budget` or `vector_dtype` (folder-index options), or
                an index type the engine would not build; and what `Gallery.add` raises.
        """
        from facesearch.index.milvus.build import build_from_photos

        if faces not in FACE_CHOICES:
            raise FaceSearchError(f"faces takes 'largest' or 'all', got '{faces}'")
        _refuse_folder_options(labeled=labeled, memory_budget=memory_budget, vector_dtype=vector_dtype)
        return build_from_photos(Path(folder), self.address, milvus_token(), self.embedder, faces=faces,
                                 strict=strict, rebuild=rebuild, batch_size=batch_size, workers=workers,
                                 progress=progress, fpir=fpir, index_type=index_type, target_recall=target_recall,
                                 wait=self.wait)

    def add_embeddings(self, shards: str | os.PathLike, *, rebuild: bool = False, fpir: float | None = None,
                       index_type: str | None = None, target_recall: float | None = None, progress=None,
                       memory_budget=None, vector_dtype=None):
        """Make the gallery mirror an embedding shard folder, nothing embedded (as `Gallery.add_embeddings`)."""
        from facesearch.api.models import model_for_vectors
        from facesearch.index.milvus.build import build_from_embeddings

        _refuse_folder_options(memory_budget=memory_budget, vector_dtype=vector_dtype)
        return build_from_embeddings(Path(shards), self.address, milvus_token(),
                                     model_dir=model_for_vectors(self.model, Path(shards)), rebuild=rebuild,
                                     fpir=fpir, index_type=index_type, target_recall=target_recall,
                                     progress=progress, wait=self.wait)

    def enrol(self, image: ImageInput, identity: str, *, face: int | None = None,
              keep_photo: bool = True) -> Enrolment:
        """Enrol one face of `image` (the largest, or `face`) under `identity` (as `Gallery.enrol`; the
        photo's bytes are not kept: `keep_photo` has no effect on Milvus)."""
        from facesearch.api.gallery import _format_of
        from facesearch.embedder.core.boxes import box_tuple
        from facesearch.embedder.pipeline import build_settings, select_faces
        from facesearch.index.milvus.enrolment import enrol_face
        from facesearch.index.storage.photostore import enrolled_path, extension_of, sha256_bytes
        from facesearch.index.storage.store import Photo
        from facesearch.index.sync.enrolment import check_identity

        identity = check_identity(identity)
        embedder = self.embedder
        name, crops = faces_in(embedder, image)
        if face is not None and not 0 <= face < len(crops):
            raise FaceSearchError(f"'{name}' shows {len(crops)} face(s): face must be 0 to {len(crops) - 1} "
                                  "(in the order search lists them)")
        pick = face if face is not None else select_faces(crops, "largest")[0]
        (vector,) = embedder.embed([crops[pick].image])
        _, data = photo_bytes(image)
        sha = sha256_bytes(data)
        path = enrolled_path(identity, sha, extension_of(_format_of(data)))
        box = box_tuple(crops[pick].box)
        done = enrol_face(self.address, milvus_token(), embedder.card, str(embedder.model_dir), identity,
                          Photo(path, identity, len(data), 0, sha, len(crops), "api"), pick, box, vector,
                          build=build_settings(embedder, "largest"), wait=self.wait)
        return Enrolment(identity, done.id, done.path, pick, box, len(crops), done.new, done.generation)

    def remove(self, identity: str) -> Removal:
        """Remove every face of `identity` (IdentityNotFoundError if none). A folder photo comes back with
        the next `add` of its folder: a Milvus gallery keeps no exclusions."""
        import unicodedata

        return self._remove(identity=unicodedata.normalize("NFC", identity))

    def remove_face(self, face_id: int) -> Removal:
        """Remove one stored face by its id (FaceNotFoundError if not live)."""
        return self._remove(face_id=int(face_id))

    def remove_photo(self, path: str) -> Removal:
        """Remove one stored photo's faces by its path in the gallery (PhotoNotFoundError if none)."""
        return self._remove(path=path)

    def _remove(self, **target) -> Removal:
        from facesearch.index.milvus.enrolment import remove

        done = remove(self.address, milvus_token(), wait=self.wait, **target)
        return Removal(done.identity, done.faces_removed, done.photos_removed, (), done.generation)

    def compact(self, **_) -> None:
        raise MilvusError(f"{self.address} is a Milvus gallery: Milvus compacts its own segments "
                          "(nothing for `facesearch compact` to do); change its index type with "
                          "`build-index --index-type T`")

    def people(self, **_) -> None:
        raise MilvusError(f"{self.address} is a Milvus gallery: the people of unlabelled photos need a folder index")

    name = merge = move = people

    # --- reads ---------------------------------------------------------------------------------------

    def search(self, image: ImageInput, *, k: int = 5, threshold: float | None = None, fpir: float | None = None,
               faces: str = "all") -> SearchResult:
        """Every face of `image` with its `k` best identities and a verdict (as `Gallery.search`); sees
        every write any process committed before the call."""
        from facesearch.embedder.pipeline import select_faces
        from facesearch.index.query import FaceSearcher

        if faces not in FACE_CHOICES:
            raise FaceSearchError(f"faces takes 'largest' or 'all', got '{faces}'")
        with self._lock:
            reader = self.reader()
            embedder = embedder_for(self.model, recorded=reader.model_dir, **self.options)
            searcher = FaceSearcher(reader, embedder, fpir=fpir if fpir is not None else self.fpir)
            name, crops = faces_in(embedder, image)
            if faces != "all":
                crops = [crops[i] for i in select_faces(crops, faces)]
            answer = {"image": name} | searcher.header(threshold) | {
                "faces": searcher.answer_crops(crops, k=k, threshold=threshold)}
        return SearchResult.from_dict(answer)

    def _recorded_model(self) -> Path | None:
        from facesearch.embedder.core.errors import IndexFormatError

        try:
            return self.reader().model_dir
        except IndexFormatError:
            return None


def _refuse_folder_options(**given) -> None:
    for name, value in given.items():
        if value not in (None, True):
            raise MilvusError(f"{name}={value!r} is an option of folder indexes; a Milvus gallery does not take it")


def open_index(index: str | os.PathLike):
    """An index opened for search: a `MilvusIndex` for a Milvus address, else a folder's `GalleryIndex`."""
    from facesearch.index.milvus.address import is_milvus_address

    if is_milvus_address(index):
        from facesearch.index.milvus.gallery import MilvusIndex

        return MilvusIndex.open(parse_address(str(index)), milvus_token())
    from facesearch.index import GalleryIndex

    return GalleryIndex.open(Path(index))
