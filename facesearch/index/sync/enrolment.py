"""Enrol faces and remove identities or faces, staged on an open `IndexWriter`: the one implementation
the Python API (`facesearch.open(...).enrol / remove`) and the service's writes both call.

The caller holds the writer (and so the index's lock) and commits. Photos go into the photo store
(fsynced) before the commit that names them; `forget_photos` deletes them after the commit that
removes the last row naming them (`facesearch.index.storage.photostore`).
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass

import numpy as np

from facesearch.embedder.core.errors import (
    FaceNotFoundError,
    IdentityNameError,
    IdentityNotFoundError,
    PhotoNotFoundError,
)
from facesearch.index.storage.photostore import PhotoStore, enrolled_path, parse_enrolled_path
from facesearch.index.storage.store import Photo
from facesearch.index.storage.writer import IndexWriter
from facesearch.index.sync.enrolled import exclusion_of

IDENTITY_MAX = 128
IDENTITY_RULE = (f"an identity is 1 to {IDENTITY_MAX} printable characters, without '/', '\\' or '..', "
                 "not starting with '.' and without leading or trailing spaces (and valid UTF-8: no U+FFFD)")


def check_identity(identity: str) -> str:
    """The identity in Unicode NFC if it follows `IDENTITY_RULE` (it becomes part of a path in the photo store).

    NFC: "é" typed as one character or as "e" + a combining accent is one identity, not two that look
    alike. U+FFFD is what invalid UTF-8 decodes to (a client's broken encoding): refused, not stored.

    Raises:
        IdentityNameError: it does not, with the rule.
    """
    identity = unicodedata.normalize("NFC", identity)
    bad = ("\ufffd" in identity or not identity or len(identity) > IDENTITY_MAX or identity != identity.strip() or identity.startswith(".")
           or "/" in identity or "\\" in identity or ".." in identity or not identity.isprintable())
    if bad:
        shown = identity[:IDENTITY_MAX].encode("unicode_escape").decode("ascii")
        raise IdentityNameError(f"identity '{shown}' is not allowed: {IDENTITY_RULE}")
    return identity


@dataclass(frozen=True)
class PhotoBytes:
    """An encoded photo as it will be kept: its bytes, their sha256 and the stored file's extension."""

    data: bytes
    sha256: str
    ext: str


@dataclass(frozen=True)
class FaceToEnrol:
    """One face of a photo, embedded, ready to be written."""

    photo: PhotoBytes
    position: int  # among the faces found in the photo (the order a search lists them in)
    box: tuple[float, float, float, float] | None
    faces_found: int
    vector: np.ndarray  # (d,) float32, L2-normalised


@dataclass(frozen=True)
class Enrolled:
    face: FaceToEnrol
    id: int
    path: str
    new: bool  # False: this face of this photo was already enrolled under the identity (nothing staged)


@dataclass(frozen=True)
class Removed:
    identity: str | None
    faces_removed: int
    photos_removed: int
    excluded: list[str]  # gallery-folder photos (or faces of them) a folder build now leaves out
    forget: list[Photo]  # enrolled photos whose stored files `forget_photos` deletes after the commit


def stage_enrolment(writer: IndexWriter, identity: str, faces: list[FaceToEnrol],
                    photos: PhotoStore | None) -> list[Enrolled]:
    """Stage `faces` under `identity`; the same face of the same photo again is a no-op.

    Args:
        photos: where the photos are kept (written now, durable before the commit); None keeps none.
    """
    out: list[Enrolled] = []
    staged: dict[tuple[str, int], int] = {}
    for face in faces:
        p = face.photo
        path = enrolled_path(identity, p.sha256, p.ext)
        known = {f.face: f.id for f in writer.faces_of([path]).get(path, [])}
        if face.position in known or (path, face.position) in staged:
            out.append(Enrolled(face, known.get(face.position, staged.get((path, face.position))), path, False))
            continue
        if photos is not None:
            photos.put(p.data, p.ext, p.sha256)
        photo = Photo(path, identity, len(p.data), time.time_ns(), p.sha256, face.faces_found, source="api")
        (new_id,) = writer.add_photo(photo, [(face.position, face.box)], face.vector[None, :])
        staged[(path, face.position)] = new_id
        out.append(Enrolled(face, new_id, path, True))
    return out


def stage_identity_removal(writer: IndexWriter, identity: str) -> Removed:
    """Stage the removal of every photo of `identity`; folder photos are also excluded from later folder builds.
    Faces of unlabelled photos whose person was given this name lose the name: they stay in the
    collection, as an unnamed person (`facesearch.index.sync.people`), counted in `faces_removed`.

    Raises:
        IdentityNotFoundError: the index has no photo (and no person) of `identity`.
    """
    photos = writer.photos_of_identity(identity)
    named = [f for f in writer.person_faces() if f.name == identity]
    if not photos and not named:
        raise IdentityNotFoundError(f"identity '{identity}' is not in the index")
    writer.put_people([(f.id, f.person, None, f.fixed) for f in named])
    paths = [p.path for p in photos]
    faces = sum(len(v) for v in writer.faces_of(paths).values()) + len(named)
    writer.remove_photos(paths)
    folder = [p for p in photos if p.source != "api"]
    writer.exclude([exclusion_of(p) for p in folder])
    return Removed(identity, faces, len(photos), [p.path for p in folder], [p for p in photos if p.source == "api"])


def stage_face_removal(writer: IndexWriter, face_id: int) -> Removed:
    """Stage the removal of one face; its photo goes too when it was the photo's last face.

    Raises:
        FaceNotFoundError: no live face has this id.
    """
    try:
        (record,) = writer.store.records([face_id])
    except KeyError:
        raise FaceNotFoundError(f"face {face_id} is not in the index") from None
    photo = next(p for p in writer.photos_of_identity(record.identity) if p.path == record.path)
    siblings = writer.faces_of([photo.path]).get(photo.path, [])
    face = next(f for f in siblings if f.id == face_id)
    whole = len(siblings) == 1
    if whole:
        writer.remove_photos([photo.path])
    else:
        writer.remove_faces([face_id])
    excluded = []
    if photo.source != "api":
        writer.exclude([exclusion_of(photo, None if whole else face)])
        excluded = [photo.path]
    return Removed(record.identity, 1, int(whole), excluded, [photo] if whole and photo.source == "api" else [])


def stage_photo_removal(writer: IndexWriter, path: str) -> Removed:
    """Stage the removal of one photo and its faces; a gallery-folder photo stays out of later folder builds.

    Raises:
        PhotoNotFoundError: no live face was stored from a photo at `path`.
    """
    faces = writer.faces_of([path]).get(path)
    if not faces:
        raise PhotoNotFoundError(f"photo '{path}' is not in the index: give its path as the index keeps it, "
                                 "relative to the gallery folder (as the matches of query --json give it)")
    (record,) = writer.store.records([faces[0].id])
    photo = next(p for p in writer.photos_of_identity(record.identity) if p.path == path)
    writer.remove_photos([path])
    excluded = []
    if photo.source != "api":
        writer.exclude([exclusion_of(photo)])
        excluded = [path]
    return Removed(record.identity, len(faces), 1, excluded, [photo] if photo.source == "api" else [])


def forget_photos(writer: IndexWriter, photos: PhotoStore, removed: list[Photo]) -> None:
    """Delete stored files that no live enrolled photo names any more (call after the commit)."""
    if not removed:
        return
    still = writer.store.live_sha256([p.sha256 for p in removed])
    for p in removed:
        parsed = parse_enrolled_path(p.path)
        if parsed is not None and p.sha256 not in still:
            photos.remove(p.sha256, parsed[2])
