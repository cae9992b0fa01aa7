"""Enrol one face, remove an identity, a face or a photo: one generation each on a Milvus gallery.

The API's `Gallery.enrol` / `remove*` call these for a Milvus address (facesearch.api.milvus).
An enrolled photo's row path is `.enrolled/<identity>/<sha256>.<ext>`, as in a folder index; its
bytes are not kept (Milvus holds vectors and rows, not files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facesearch.embedder.core.errors import FaceNotFoundError, IdentityNotFoundError, PhotoNotFoundError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.milvus.address import MilvusAddress
from facesearch.index.milvus.build import commit_write, prepare_gallery
from facesearch.index.milvus.engine import connect, disconnect
from facesearch.index.milvus.gallery import _quoted
from facesearch.index.milvus.writer import MilvusWriter, open_milvus_writer
from facesearch.index.storage.store import Box, Photo


@dataclass(frozen=True)
class Enrolled:
    id: int
    path: str
    new: bool  # False: that face of that photo was enrolled under this identity already
    generation: int


@dataclass(frozen=True)
class Removed:
    identity: str | None
    faces_removed: int
    photos_removed: int
    generation: int


def enrol_face(address: MilvusAddress, token: str | None, card: ModelCard, model_dir: str, identity: str,
               photo: Photo, face: int, box: Box | None, vector: np.ndarray, *, build: dict,
               wait: float = 0.0) -> Enrolled:
    """Store `vector` `(d,)` float32 as face `face` of `photo` under `identity` (creating the gallery if needed)."""
    client = connect(address, token)
    try:
        prepare_gallery(client, address, card, model_dir=model_dir, source_dir="", build=build, check_build=False)
        writer = open_milvus_writer(client, address, wait)
        try:
            same = writer.store.query(f"path == {_quoted(photo.path)} and face == {int(face)}", ["id"])
            if same:
                return Enrolled(int(same[0]["id"]), photo.path, False, writer.manifest.generation)
            (face_id,) = writer.add_photo(photo, [(face, box)], vector.reshape(1, -1))
            m, _ = commit_write(writer)
            return Enrolled(face_id, photo.path, True, m.generation)
        finally:
            writer.release()
    finally:
        disconnect(client, address)


def remove(address: MilvusAddress, token: str | None, *, identity: str | None = None, face_id: int | None = None,
           path: str | None = None, wait: float = 0.0) -> Removed:
    """Remove every face of `identity`, or the face `face_id`, or the faces of the photo at `path` (one of them).

    Raises:
        IdentityNotFoundError, FaceNotFoundError, PhotoNotFoundError: nothing live matches.
    """
    client = connect(address, token)
    try:
        writer = open_milvus_writer(client, address, wait)
        try:
            rows, who = _targets(writer, identity, face_id, path)
            writer.remove_ids([int(r["id"]) for r in rows])
            m, _ = commit_write(writer)
            return Removed(who, len(rows), len({r["path"] for r in rows}), m.generation)
        finally:
            writer.release()
    finally:
        disconnect(client, address)


def _targets(writer: MilvusWriter, identity: str | None, face_id: int | None, path: str | None):
    fields = ["id", "path", "identity"]
    if identity is not None:
        rows = list(writer.store.scan(fields, f"identity == {_quoted(identity)}"))
        if not rows:
            raise IdentityNotFoundError(f"no photo of identity '{identity}' is in the gallery at {writer.address}")
        return rows, identity
    if face_id is not None:
        rows = writer.store.query(f"id == {int(face_id)}", fields)
        if not rows:
            raise FaceNotFoundError(f"no live face has id {face_id} in the gallery at {writer.address}")
        return rows, None
    rows = list(writer.store.scan(fields, f"path == {_quoted(path)}"))
    if not rows:
        raise PhotoNotFoundError(f"no face was stored from a photo at '{path}' in the gallery at {writer.address}")
    identities = {r["identity"] for r in rows}
    return rows, identities.pop() if len(identities) == 1 else None
