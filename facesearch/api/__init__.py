"""The door: open / verify / detect / embed, typed results, one error hierarchy.

The CLI and the service call these; so do users' scripts (`import facesearch`). Images go in as a
path, the file's bytes, a PIL image or an (H, W, 3) uint8 RGB numpy array.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from facesearch.api.gallery import Gallery
from facesearch.api.images import ImageInput, decoded, faces_in
from facesearch.api.models import detector_config, embedder_for, resolve_model
from facesearch.api.results import (
    Compaction,
    DetectedFace,
    EmbeddedFace,
    Enrolment,
    Face,
    Match,
    People,
    PeopleChange,
    Person,
    PersonFace,
    Removal,
    SearchResult,
    Verification,
)
from facesearch.api.verdicts import verify_faces

__all__ = [
    "Compaction", "DetectedFace", "EmbeddedFace", "Enrolment", "Face", "Gallery", "ImageInput", "Match", "People", "PeopleChange",
    "Person", "PersonFace", "Removal", "SearchResult",
    "Verification", "detect", "embed", "open", "resolve_model", "verify", "verify_faces",
]


def open(index: str | os.PathLike, *, model: str | os.PathLike | None = None, aligned: bool = False,  # noqa: A001
         min_face_size: int | None = None, face_threshold: float | None = None,
         fpir: float | None = None) -> Gallery:
    """The gallery at `index`: an index folder (the first `add` or `enrol` creates it; see `Gallery`), or a
    Milvus gallery, `milvus://HOST[:PORT]/[DB/]COLLECTION`, `milvus+tls://...` or
    `milvus-lite:PATH.db[#COLLECTION]` (`facesearch.api.milvus.MilvusGallery`: the same calls; docs/milvus.md).

    Raises:
        MilvusError: a malformed Milvus address.
    """
    from facesearch.index.milvus.address import is_milvus_address

    if is_milvus_address(index):
        from facesearch.api.milvus import MilvusGallery

        return MilvusGallery(index, model=model, aligned=aligned, min_face_size=min_face_size,
                             face_threshold=face_threshold, fpir=fpir)
    return Gallery(index, model=model, aligned=aligned, min_face_size=min_face_size, face_threshold=face_threshold,
                   fpir=fpir)


def verify(first: ImageInput, second: ImageInput, *, model: str | os.PathLike | None = None,
           threshold: float | None = None, aligned: bool = False) -> Verification:
    """Whether the largest faces of two photos are the same person.

    The threshold is `threshold`, else the model card's pair threshold (`far_1e-3` where the card
    was calibrated), never an index's: that one is for searching many people at once.

    Raises:
        ImageReadError, NoFaceFoundError: a photo cannot be read or shows no face.
    """
    embedder = embedder_for(model, aligned=aligned)
    return verify_faces(embedder, [faces_in(embedder, image) for image in (first, second)], threshold=threshold)


def detect(image: ImageInput, *, min_face_size: int | None = None,
           face_threshold: float | None = None) -> list[DetectedFace]:
    """Every face the detector finds (MTCNN): box, score, 5 landmarks, highest score first.

    Raises:
        ImageReadError: the image cannot be read.
    """
    from facesearch.embedder.core.boxes import box_tuple
    from facesearch.embedder.detect import Detector

    _, pixels = decoded(image)
    return [DetectedFace(box_tuple(d.box), float(d.score), tuple((float(x), float(y)) for x, y in d.landmarks))
            for d in Detector(detector_config(min_face_size, face_threshold)).detect(pixels)]


def embed(images: ImageInput | Sequence[ImageInput], *, model: str | os.PathLike | None = None,
          faces: str = "all", aligned: bool = False) -> list[EmbeddedFace]:
    """Every face of each image (or each one's largest, `faces="largest"`) with its vector, in input order.

    A photo without a face contributes none (use `detect` to tell); a photo that cannot be read raises.

    Returns:
        `EmbeddedFace`s: `vector` is `(d,)` float32, L2-normalised, as the index stores them.
    """
    import itertools

    from facesearch.embedder.core.boxes import box_tuple
    from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
    from facesearch.embedder.core.errors import FaceSearchError, NoFaceFoundError
    from facesearch.embedder.pipeline import select_faces

    if faces not in ("all", "largest"):
        raise FaceSearchError(f"faces takes 'largest' or 'all', got '{faces}'")
    if isinstance(images, (str, os.PathLike, bytes, bytearray)) or hasattr(images, "shape") or hasattr(images, "mode"):
        images = [images]
    embedder = embedder_for(model, aligned=aligned)
    out: list[EmbeddedFace] = []
    images = iter(images)
    while chunk := list(itertools.islice(images, DEFAULT_BATCH_SIZE)):  # one model call per chunk, bounded memory
        found = []  # (image name, face position, crop)
        for image in chunk:
            try:
                name, crops = faces_in(embedder, image)
            except NoFaceFoundError:
                continue
            picks = range(len(crops)) if faces == "all" else select_faces(crops, "largest")
            found.extend((name, i, crops[i]) for i in picks)
        if not found:
            continue
        vectors = embedder.embed([crop.image for _, _, crop in found])
        out.extend(EmbeddedFace(name, i, box_tuple(crop.box), crop.score, v, embedder.card.name)
                   for (name, i, crop), v in zip(found, vectors))
    return out
