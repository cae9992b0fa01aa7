"""SQLite identity metadata of a gallery index: one row per photo, one row per stored face vector."""

from __future__ import annotations

import os
import shutil
import sqlite3
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from embedder.core.constants import Box
from embedder.core.errors import IndexFormatError

SCHEMA_VERSION = 1  # PRAGMA user_version of the metadata file

_SCHEMA = """
CREATE TABLE photos (
    path     TEXT PRIMARY KEY,  -- relative to the gallery folder, '/'-separated
    identity TEXT NOT NULL,
    size     INTEGER NOT NULL,  -- bytes
    mtime_ns INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    n_faces  INTEGER NOT NULL   -- faces found in the photo; 0 = no face, nothing stored
) WITHOUT ROWID;
CREATE TABLE faces (
    id   INTEGER PRIMARY KEY,   -- the FAISS id of this face's vector
    path TEXT NOT NULL REFERENCES photos(path),
    face INTEGER NOT NULL,      -- position among the faces found in the photo
    x1 REAL, y1 REAL, x2 REAL, y2 REAL  -- box in the photo; NULL for pre-aligned crops
);
CREATE INDEX faces_path ON faces(path);
CREATE INDEX photos_identity ON photos(identity);
CREATE VIEW records AS
    SELECT f.id, f.path, p.identity, f.face, f.x1, f.y1, f.x2, f.y2, p.size, p.mtime_ns, p.sha256
    FROM faces AS f JOIN photos AS p USING (path);
"""

_CHUNK = 500  # ids per `IN (...)` query, under SQLite's bound-parameter limit




@dataclass(frozen=True)
class Photo:
    """A gallery photo as last indexed."""

    path: str
    identity: str
    size: int
    mtime_ns: int
    sha256: str
    n_faces: int


@dataclass(frozen=True)
class StoredFace:
    """A face of a photo whose vector is in the index."""

    id: int
    face: int
    box: Box | None


@dataclass(frozen=True)
class FaceRecord:
    """Metadata of one stored vector: which photo, whose, where in the photo."""

    id: int
    path: str
    identity: str
    face: int
    box: Box | None
    size: int
    mtime_ns: int
    sha256: str

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "identity": self.identity, "face": self.face,
                "box": list(self.box) if self.box is not None else None, "size": self.size,
                "mtime_ns": self.mtime_ns, "sha256": self.sha256}


def _box(x1, y1, x2, y2) -> Box | None:
    return None if x1 is None else (float(x1), float(y1), float(x2), float(y2))


class MetadataStore:
    """An open metadata file. Query paths open it read-only; builds write a fresh copy."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self._conn = conn
        self.path = path

    @classmethod
    def open_readonly(cls, path: str | os.PathLike) -> MetadataStore:
        """Open a committed metadata file; it is never modified, so no locking is needed.

        Raises:
            IndexFormatError: the file is missing, not SQLite, or of another schema version.
        """
        path = Path(path)
        if not path.is_file():
            raise IndexFormatError(f"metadata file '{path}' is missing")
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&immutable=1"
        store = cls(sqlite3.connect(uri, uri=True), path)
        store.check_schema()
        return store

    @classmethod
    def create(cls, path: str | os.PathLike, copy_of: str | os.PathLike | None = None) -> MetadataStore:
        """A writable metadata file at `path`: a copy of `copy_of`, or empty with the schema.

        The file belongs to a generation no manifest names yet, so a crash only leaves
        garbage to clean up: it is written without a journal and synced in `close_synced`.
        """
        path = Path(path)
        path.unlink(missing_ok=True)
        if copy_of is not None:
            shutil.copyfile(copy_of, path)
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        store = cls(conn, path)
        if copy_of is None:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        else:
            store.check_schema()
        return store

    def check_schema(self) -> None:
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            self._conn.execute("SELECT count(*) FROM records WHERE id < 0").fetchone()
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"metadata file '{self.path}' is damaged: {e}") from e
        if version != SCHEMA_VERSION:
            raise IndexFormatError(f"metadata file '{self.path}' has schema version {version}; "
                                   f"this facesearch reads version {SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    def close_synced(self) -> None:
        """Commit, close and fsync the file (writers only)."""
        self._conn.commit()
        self._conn.close()
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())

    # --- reading -------------------------------------------------------------------------

    def counts(self) -> tuple[int, int, int]:
        """(faces, photos, identities)."""
        q = self._conn.execute
        return (q("SELECT count(*) FROM faces").fetchone()[0], q("SELECT count(*) FROM photos").fetchone()[0],
                q("SELECT count(DISTINCT identity) FROM photos").fetchone()[0])

    def photos(self) -> dict[str, Photo]:
        """Every photo by relative path."""
        rows = self._conn.execute("SELECT path, identity, size, mtime_ns, sha256, n_faces FROM photos")
        return {r[0]: Photo(*r) for r in rows}

    def faces_of(self, paths: Iterable[str]) -> dict[str, list[StoredFace]]:
        """The stored faces of each of `paths` (photos with none are absent), in face order."""
        out: dict[str, list[StoredFace]] = {}
        paths = list(paths)
        for i in range(0, len(paths), _CHUNK):
            chunk = paths[i:i + _CHUNK]
            rows = self._conn.execute(
                f"SELECT path, id, face, x1, y1, x2, y2 FROM faces WHERE path IN ({','.join('?' * len(chunk))})"
                " ORDER BY path, face", chunk)
            for path, id_, face, *box in rows:
                out.setdefault(path, []).append(StoredFace(id_, face, _box(*box)))
        return out

    def records(self, ids: Sequence[int]) -> list[FaceRecord]:
        """Records of `ids`, in the order given.

        Raises:
            KeyError: an id is not in the index (e.g. -1 padding from a search).
        """
        ids = [int(i) for i in ids]
        found: dict[int, FaceRecord] = {}
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i:i + _CHUNK]
            rows = self._conn.execute(
                "SELECT id, path, identity, face, x1, y1, x2, y2, size, mtime_ns, sha256 FROM records"
                f" WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            for id_, path, identity, face, x1, y1, x2, y2, size, mtime_ns, sha in rows:
                found[id_] = FaceRecord(id_, path, identity, face, _box(x1, y1, x2, y2), size, mtime_ns, sha)
        missing = [i for i in unique if i not in found]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:10]}")
        return [found[i] for i in ids]

    # --- writing -------------------------------------------------------------------------

    def delete_photos(self, paths: Iterable[str]) -> None:
        """Remove photos and their faces."""
        rows = [(p,) for p in paths]
        self._conn.executemany("DELETE FROM faces WHERE path = ?", rows)
        self._conn.executemany("DELETE FROM photos WHERE path = ?", rows)

    def put_photos(self, photos: Iterable[Photo]) -> None:
        """Insert photos, or update those already present (their faces are kept)."""
        self._conn.executemany(
            "INSERT INTO photos (path, identity, size, mtime_ns, sha256, n_faces) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(path) DO UPDATE SET identity = excluded.identity, size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, n_faces = excluded.n_faces",
            [(p.path, p.identity, p.size, p.mtime_ns, p.sha256, p.n_faces) for p in photos])

    def add_faces(self, rows: Iterable[tuple[str, StoredFace]]) -> None:
        """Add `(photo path, face)` rows; the photos must be present."""
        self._conn.executemany(
            "INSERT INTO faces (id, path, face, x1, y1, x2, y2) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(f.id, path, f.face, *(f.box if f.box is not None else (None,) * 4)) for path, f in rows])
