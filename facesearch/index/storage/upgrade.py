"""Upgrading an index of the old format (one FAISS file + one SQLite file per generation) in place.

Nothing is embedded again: the old file's vectors become the first segment and its rows the
first generation of the new metadata file. The upgrade is a commit like any other (new files,
then the manifest swap), so an interrupted upgrade leaves the old index as it was.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

import faiss
import numpy as np

from facesearch.embedder.core.errors import FaceSearchError, IndexFormatError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.storage.generation import commit
from facesearch.index.storage.manifest import IndexPolicy, Manifest, read_manifest_data, utc_now
from facesearch.index.storage.segments import write_segment
from facesearch.index.storage.store import IndexStore, Photo, StoredFace, metadata_name


def upgrade_if_old(index_dir: Path) -> bool:
    """Upgrade `index_dir` to the current format if it is of format 1 (caller holds the lock).

    Returns:
        Whether it was upgraded.

    Raises:
        IndexFormatError: the old index is damaged.
    """
    data = read_manifest_data(index_dir)
    if not isinstance(data, dict) or data.get("format_version") != 1:
        return False
    where = f"old-format index '{index_dir}'"
    try:
        generation = int(data["generation"])
        card = ModelCard.from_dict(data["model_card"], source=where)
        vectors_file, metadata_file = data["files"]["vectors"], data["files"]["metadata"]
        old_vectors = faiss.read_index(str(index_dir / Path(vectors_file).name))
        ids = faiss.vector_to_array(old_vectors.id_map).astype(np.int64)
        flat = faiss.downcast_index(old_vectors.index)
        xb = faiss.vector_to_array(flat.codes).view(np.float32).reshape(old_vectors.ntotal, old_vectors.d)
        photos, faces = _old_rows(index_dir / Path(metadata_file).name)
    except (KeyError, TypeError, ValueError, RuntimeError, FaceSearchError, sqlite3.DatabaseError) as e:
        raise IndexFormatError(f"{where} cannot be upgraded, it is damaged ({type(e).__name__}: {e}) - rebuild it "
                               f"with `facesearch build-index PHOTOS_DIR --index {index_dir} --rebuild`") from e
    g = generation + 1
    order = np.argsort(ids)
    segment = write_segment(index_dir, 0, xb[order], ids[order]) if len(ids) else None
    name = metadata_name(g)
    (index_dir / name).unlink(missing_ok=True)
    store = IndexStore.create(index_dir / name, base=generation)
    try:
        with store.write() as w:
            for p in photos:
                w.put_photo(p)
            w.add_faces(faces)
        counts = w.counts
    finally:
        store.close()
    manifest = Manifest(generation=g, dim=card.embedding_size, segments=[segment] if segment else [],
                        tombstones=None, dead=0, faces=counts.faces, photos=counts.photos,
                        identities=counts.identities, next_id=int(data["next_id"]), next_segment=1, model_card=card,
                        model_dir=str(data["model_dir"]), source_dir=str(data["source_dir"]), metadata_file=name,
                        build=dict(data.get("build", {})), policy=IndexPolicy(), created=str(data["created"]),
                        updated=utc_now())
    if manifest.stored != manifest.faces:
        raise IndexFormatError(f"{where} is inconsistent ({manifest.stored} vectors, {manifest.faces} rows) - "
                               f"rebuild it with `facesearch build-index PHOTOS_DIR --index {index_dir} --rebuild`")
    commit(index_dir, manifest)
    return True


def _old_rows(path: Path) -> tuple[list[Photo], list[tuple[str, StoredFace]]]:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] != 1:
            raise ValueError(f"metadata file '{path}' is not of schema version 1")
        photos = [Photo(*r, source="folder") for r in conn.execute(
            "SELECT path, identity, size, mtime_ns, sha256, n_faces FROM photos ORDER BY path")]
        faces = [(path_, StoredFace(id_, face, None if x1 is None else (x1, y1, x2, y2)))
                 for id_, path_, face, x1, y1, x2, y2 in conn.execute(
                     "SELECT id, path, face, x1, y1, x2, y2 FROM faces ORDER BY id")]
    finally:
        conn.close()
    return photos, faces
