"""SQLite identity metadata of a gallery index, versioned by generation.

One file, updated in place: every row carries the generation that added it and the one that
removed it (NULL while live), so a reader opened on generation G sees exactly the rows with
`added <= G < removed`, while a writer prepares generation G + 1 in the same file. A write only
touches the rows that change. The manifest (`facesearch.index.storage.manifest`) names the committed generation:
rows of a generation that no manifest names yet (a write that crashed before its manifest
swap) are invisible to readers and rolled back by the next writer (`IndexStore.rollback`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from facesearch.embedder.core.constants import Box
from facesearch.embedder.core.errors import IndexFormatError

SCHEMA_VERSION = 2  # PRAGMA user_version of the metadata file

def metadata_name(generation: int) -> str:
    """The metadata file an index creates at `generation` (its first build, a rebuild, an upgrade)."""
    return f"meta-{generation:06d}.sqlite"

SOURCES = ("folder", "api", "unlabeled")  # the mirrored gallery folder, an enrolment, an unlabelled folder

_SCHEMA = """
CREATE TABLE photos (
    path     TEXT NOT NULL,     -- relative to the gallery folder ('/'-separated), a photo-store key, or
                                -- absolute for an unlabelled photo
    identity TEXT NOT NULL,     -- '' for an unlabelled photo (its faces' identities are in people)
    size     INTEGER NOT NULL,  -- bytes
    mtime_ns INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    n_faces  INTEGER NOT NULL,  -- faces found in the photo; 0 = no face, nothing stored
    source   TEXT NOT NULL,     -- 'folder' (mirrors the gallery folder), 'api' (enrolled), 'unlabeled'
    added    INTEGER NOT NULL,  -- generation that added this version of the row
    removed  INTEGER            -- generation that removed it; NULL while live
);
CREATE UNIQUE INDEX photos_live_path ON photos(path) WHERE removed IS NULL;
CREATE INDEX photos_path ON photos(path, added);
CREATE INDEX photos_identity ON photos(identity);
CREATE INDEX photos_removed ON photos(removed) WHERE removed IS NOT NULL;
CREATE TABLE faces (
    id      INTEGER NOT NULL,     -- the vector's id in the segments (a moved photo keeps its vectors' ids)
    path    TEXT NOT NULL,
    face    INTEGER NOT NULL,     -- position among the faces found in the photo
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,  -- box in the photo; NULL for pre-aligned crops
    added   INTEGER NOT NULL,
    removed INTEGER
);
CREATE UNIQUE INDEX faces_live_id ON faces(id) WHERE removed IS NULL;
CREATE INDEX faces_id ON faces(id, added);
CREATE INDEX faces_path ON faces(path);
CREATE INDEX faces_removed ON faces(removed) WHERE removed IS NOT NULL;
CREATE TABLE generations (
    generation INTEGER PRIMARY KEY,
    faces      INTEGER NOT NULL,  -- live rows once this generation is committed
    photos     INTEGER NOT NULL,
    identities INTEGER NOT NULL
);
"""

# Gallery-folder photos (or single faces of them) removed through the service: a folder build
# does not add them back while the file is unchanged (README "Who owns what"). Created by the
# first writer of a file made before the table existed.
_EXCLUSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS exclusions (
    path     TEXT NOT NULL,     -- the folder photo, relative to the gallery folder
    size     INTEGER NOT NULL,  -- the file as it was when removed: while it keeps this size and
    mtime_ns INTEGER NOT NULL,  -- mtime, or these bytes, a folder build leaves it out
    sha256   TEXT NOT NULL,
    face     INTEGER,           -- one face (its position when removed), or NULL: the whole photo
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,  -- that face's box, to find it again when photos are re-embedded
    added    INTEGER NOT NULL,
    removed  INTEGER
);
CREATE INDEX IF NOT EXISTS exclusions_path ON exclusions(path);
"""
# Provisional people among the faces of unlabelled photos (source 'unlabeled', identity ''): one row
# per face that clustering has seen (`facesearch.index.sync.people`). A face with a `name` belongs to
# that identity (queries find it, calibration counts it); a face of an unlabelled photo without
# a name has no identity and is never searched. Created by the first writer of an older file.
_PEOPLE_SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    id      INTEGER NOT NULL,  -- a face of an unlabelled photo
    person  INTEGER NOT NULL,  -- its provisional person (person-0001 is 1); 0: alone (unclustered)
    name    TEXT,              -- the identity the user named that person; NULL until named
    fixed   INTEGER NOT NULL,  -- 1: placed by the user (named, moved in or out); clustering keeps it
    added   INTEGER NOT NULL,
    removed INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS people_live_id ON people(id) WHERE removed IS NULL;
CREATE INDEX IF NOT EXISTS people_id ON people(id, added);
CREATE INDEX IF NOT EXISTS people_name ON people(name) WHERE name IS NOT NULL;
CREATE INDEX IF NOT EXISTS people_removed ON people(removed) WHERE removed IS NOT NULL;
"""
_SCHEMA += _EXCLUSIONS_SCHEMA + _PEOPLE_SCHEMA
_VERSIONED = ("photos", "faces", "exclusions", "people")  # tables whose rows carry added/removed generations
UNLABELED = "unlabeled"  # the source of photos stored without an identity (their identity is '')
# What a reader of a file made before the people table existed joins instead (no rows).
_NO_PEOPLE = "(SELECT 0 AS id, 0 AS person, NULL AS name, 0 AS fixed, 0 AS added, NULL AS removed WHERE 0)"

# Rows visible at generation :g.
_LIVE = "{t}.added <= :g AND ({t}.removed IS NULL OR {t}.removed > :g)"
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
    source: str = "folder"


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


@dataclass(frozen=True)
class Exclusion:
    """A gallery-folder photo, or one face of it, removed through the service (not by the folder)."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    face: int | None = None  # None: the whole photo
    box: Box | None = None  # the face's box (None for the whole photo or a pre-aligned crop)


@dataclass(frozen=True)
class PersonFace:
    """A face of an unlabelled photo and where clustering (or the user) put it."""

    id: int
    path: str
    face: int
    box: Box | None
    person: int | None  # None: not seen by clustering yet; 0: alone; else person-NNNN
    name: str | None  # the identity its person was named
    fixed: bool  # placed by the user: clustering keeps it


@dataclass(frozen=True)
class Counts:
    """Live faces, photos and identities (identities: those with at least one photo)."""

    faces: int
    photos: int
    identities: int


def _box(x1, y1, x2, y2) -> Box | None:
    return None if x1 is None else (float(x1), float(y1), float(x2), float(y2))


class IndexStore:
    """The metadata file of an index, opened for reading at one generation or for writing the next.

    Readers (`open_reader`) may be used from several threads (calls are serialised); a writer
    (`open_writer`) belongs to the one process holding the index's build lock.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, generation: int):
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.generation = generation  # readers: the generation they see; writers: the one they write
        self._people = "people"  # the people table, or an empty stand-in in a file made before it

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open_reader(cls, path: str | os.PathLike, generation: int) -> IndexStore:
        """Open a committed metadata file read-only, seeing generation `generation`.

        Raises:
            IndexFormatError: the file is missing, not SQLite, of another schema version, or has
                no record of that generation.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
        store = cls(_connect(uri, uri=True), path, generation)
        store._check_schema()
        if not store._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'people'"):
            store._people = _NO_PEOPLE
        return store

    @classmethod
    def create(cls, path: str | os.PathLike, base: int = 0) -> IndexStore:
        """A new, empty metadata file, opened to write generation `base + 1`; fails if it exists.

        `base` is recorded as an empty committed generation: the one the first write builds on.
        """
        path = Path(path)
        if path.exists():
            raise FileExistsError(path)
        conn = _connect(str(path))
        conn.execute("PRAGMA journal_mode=WAL")
        # A new file that no manifest names yet: a crash here leaves a leftover the next write removes.
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("INSERT INTO generations VALUES (?, 0, 0, 0)", (base,))
        conn.close()
        return cls.open_writer(path, base)

    @classmethod
    def open_writer(cls, path: str | os.PathLike, committed: int) -> IndexStore:
        """Open the metadata file to write generation `committed + 1`.

        Rows that a crashed write left for a generation after `committed` are rolled back first.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(path)
        conn = _connect(str(path))
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed write survives a power cut
        except sqlite3.DatabaseError as e:
            conn.close()
            raise IndexFormatError(f"metadata file '{path}' is damaged: {e}") from e
        store = cls(conn, path, committed + 1)
        store._check_schema()
        conn.executescript(_EXCLUSIONS_SCHEMA + _PEOPLE_SCHEMA)
        store.rollback(committed)
        return store

    def _check_schema(self) -> None:
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                self._conn.execute("SELECT count(*) FROM faces WHERE id < 0").fetchone()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise IndexFormatError(f"metadata file '{self.path}' is damaged: {e}") from e
        if version != SCHEMA_VERSION:
            self._conn.close()
            raise IndexFormatError(f"metadata file '{self.path}' has schema version {version}; "
                                   f"this facesearch reads version {SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    # --- reading (at self.generation) ------------------------------------------------------

    def _query(self, sql: str, params: dict | Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as e:
                raise IndexFormatError(f"metadata file '{self.path}' is damaged: {e}") from e

    def recorded_counts(self, generation: int | None = None) -> Counts | None:
        """The counts a writer recorded when it committed `generation` (None: no such record)."""
        g = self.generation if generation is None else generation
        rows = self._query("SELECT faces, photos, identities FROM generations WHERE generation = ?", (g,))
        return Counts(*rows[0]) if rows else None

    def count_faces(self) -> int:
        """Live face rows, counted (a full scan: for checks, not for every open of a large index)."""
        return self._query(f"SELECT count(*) FROM faces AS f WHERE {_LIVE.format(t='f')}",
                           {"g": self.generation})[0][0]

    def photos(self, source: str | None = "folder") -> dict[str, Photo]:
        """Live photos by path (of one source, or all with `source=None`)."""
        where = _LIVE.format(t="p") + ("" if source is None else " AND p.source = :source")
        rows = self._query(f"SELECT path, identity, size, mtime_ns, sha256, n_faces, source FROM photos AS p "
                           f"WHERE {where}", {"g": self.generation, "source": source})
        return {r[0]: Photo(*r) for r in rows}

    def faces_of(self, paths: Iterable[str]) -> dict[str, list[StoredFace]]:
        """The live stored faces of each of `paths` (photos with none are absent), in face order."""
        out: dict[str, list[StoredFace]] = {}
        paths = list(paths)
        for i in range(0, len(paths), _CHUNK):
            chunk = paths[i:i + _CHUNK]
            params = {"g": self.generation} | {f"p{j}": p for j, p in enumerate(chunk)}
            rows = self._query(
                f"SELECT path, id, face, x1, y1, x2, y2 FROM faces AS f WHERE {_LIVE.format(t='f')} AND path IN "
                f"({','.join(f':p{j}' for j in range(len(chunk)))}) ORDER BY path, face", params)
            for path, id_, face, *box in rows:
                out.setdefault(path, []).append(StoredFace(id_, face, _box(*box)))
        return out

    def records(self, ids: Sequence[int]) -> list[FaceRecord]:
        """Records of `ids`, in the order given.

        Raises:
            KeyError: an id is not live in this generation (e.g. -1 padding from a search).
        """
        ids = [int(i) for i in ids]
        found: dict[int, FaceRecord] = {}
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i:i + _CHUNK]
            params = {"g": self.generation} | {f"i{j}": v for j, v in enumerate(chunk)}
            rows = self._query(
                "SELECT f.id, f.path, COALESCE(n.name, p.identity), f.face, f.x1, f.y1, f.x2, f.y2, p.size,"
                f" p.mtime_ns, p.sha256 FROM faces AS f JOIN photos AS p ON p.path = f.path AND {_LIVE.format(t='p')}"
                f" LEFT JOIN {self._people} AS n ON n.id = f.id AND {_LIVE.format(t='n')}"
                f" WHERE {_LIVE.format(t='f')} AND f.id IN ({','.join(f':i{j}' for j in range(len(chunk)))})",
                params)
            for id_, path, identity, face, x1, y1, x2, y2, size, mtime_ns, sha in rows:
                found[id_] = FaceRecord(id_, path, identity, face, _box(x1, y1, x2, y2), size, mtime_ns, sha)
        missing = [i for i in unique if i not in found]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:10]}")
        return [found[i] for i in ids]

    def identities(self, offset: int = 0, limit: int | None = None) -> list[tuple[str, int, int]]:
        """(identity, photos, faces) of live identities, sorted by name, paged: the identities of labelled
        photos and the names given to people (unlabelled photos have none)."""
        rows = self._query(
            "SELECT identity, count(DISTINCT path), count(id) FROM ("
            " SELECT p.identity AS identity, p.path AS path, f.id AS id FROM photos AS p"
            f" LEFT JOIN faces AS f ON f.path = p.path AND {_LIVE.format(t='f')}"
            f" WHERE {_LIVE.format(t='p')} AND p.identity != ''"
            f" UNION ALL SELECT n.name, f.path, f.id FROM {self._people} AS n"
            f" JOIN faces AS f ON f.id = n.id AND {_LIVE.format(t='f')}"
            f" WHERE {_LIVE.format(t='n')} AND n.name IS NOT NULL)"
            " GROUP BY identity ORDER BY identity LIMIT :limit OFFSET :offset",
            {"g": self.generation, "limit": -1 if limit is None else int(limit), "offset": int(offset)})
        return [(r[0], r[1], r[2]) for r in rows]

    def ids_of_identity(self, identity: str) -> list[int]:
        """Live face ids of `identity` (its labelled photos' faces and the faces of people given its name)."""
        if not identity:
            return []
        rows = self._query(f"SELECT f.id FROM faces AS f JOIN photos AS p ON p.path = f.path AND {_LIVE.format(t='p')}"
                           f" WHERE {_LIVE.format(t='f')} AND p.identity = :identity"
                           f" UNION SELECT n.id FROM {self._people} AS n JOIN faces AS f ON f.id = n.id AND"
                           f" {_LIVE.format(t='f')} WHERE {_LIVE.format(t='n')} AND n.name = :identity ORDER BY 1", {"g": self.generation, "identity": identity})
        return [r[0] for r in rows]

    def unidentified_ids(self) -> list[int]:
        """Live faces with no identity (of unlabelled photos, their person not named), by id: a search
        never returns them."""
        rows = self._query(f"SELECT f.id FROM photos AS p JOIN faces AS f ON f.path = p.path AND {_LIVE.format(t='f')}"
                           f" LEFT JOIN {self._people} AS n ON n.id = f.id AND {_LIVE.format(t='n')}"
                           f" WHERE {_LIVE.format(t='p')} AND p.identity = '' AND n.name IS NULL ORDER BY f.id",
                           {"g": self.generation})
        return [r[0] for r in rows]

    def person_faces(self) -> list[PersonFace]:
        """Every live face of an unlabelled photo with its person (None where clustering has not seen it), by id."""
        rows = self._query(
            f"SELECT f.id, f.path, f.face, f.x1, f.y1, f.x2, f.y2, n.person, n.name, n.fixed FROM photos AS p"
            f" JOIN faces AS f ON f.path = p.path AND {_LIVE.format(t='f')}"
            f" LEFT JOIN {self._people} AS n ON n.id = f.id AND {_LIVE.format(t='n')}"
            f" WHERE {_LIVE.format(t='p')} AND p.identity = '' ORDER BY f.id", {"g": self.generation})
        return [PersonFace(id_, path, face, _box(x1, y1, x2, y2), person, name, bool(fixed))
                for id_, path, face, x1, y1, x2, y2, person, name, fixed in rows]

    def photos_of_identity(self, identity: str) -> list[Photo]:
        """Live photos of `identity` (any source), by path."""
        rows = self._query(f"SELECT path, identity, size, mtime_ns, sha256, n_faces, source FROM photos AS p "
                           f"WHERE {_LIVE.format(t='p')} AND p.identity = :identity ORDER BY path",
                           {"g": self.generation, "identity": identity})
        return [Photo(*r) for r in rows]

    def photos_at(self, paths: Iterable[str]) -> dict[str, Photo]:
        """The live photos at `paths` (any source), by path; paths with none are absent."""
        out: dict[str, Photo] = {}
        paths = list(dict.fromkeys(paths))
        for i in range(0, len(paths), _CHUNK):
            chunk = paths[i:i + _CHUNK]
            params = {"g": self.generation} | {f"p{j}": p for j, p in enumerate(chunk)}
            rows = self._query(f"SELECT path, identity, size, mtime_ns, sha256, n_faces, source FROM photos AS p WHERE "
                               f"{_LIVE.format(t='p')} AND path IN ({','.join(f':p{j}' for j in range(len(chunk)))})",
                               params)
            out.update((r[0], Photo(*r)) for r in rows)
        return out

    def live_sha256(self, digests: Iterable[str] | None, source: str = "api") -> set[str]:
        """Those of `digests` that a live photo of `source` still has (a photo store keeps only those);
        every live photo's with `digests=None`. A scan of the photos (there is no index by digest)."""
        if digests is None:
            return {r[0] for r in self._query(f"SELECT DISTINCT sha256 FROM photos AS p WHERE {_LIVE.format(t='p')} "
                                              "AND p.source = :source", {"g": self.generation, "source": source})}
        digests, out = list(dict.fromkeys(digests)), set()
        for i in range(0, len(digests), _CHUNK):
            chunk = digests[i:i + _CHUNK]
            params = {"g": self.generation, "source": source} | {f"s{j}": v for j, v in enumerate(chunk)}
            out |= {r[0] for r in self._query(
                f"SELECT DISTINCT sha256 FROM photos AS p WHERE {_LIVE.format(t='p')} AND p.source = :source AND "
                f"p.sha256 IN ({','.join(f':s{j}' for j in range(len(chunk)))})", params)}
        return out

    def exclusions(self) -> list[Exclusion]:
        """Live exclusions (folder photos or faces removed through the service), by path then face."""
        if not self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'exclusions'"):
            return []  # a file made before the table existed, opened read-only
        rows = self._query(f"SELECT path, size, mtime_ns, sha256, face, x1, y1, x2, y2 FROM exclusions AS e "
                           f"WHERE {_LIVE.format(t='e')} ORDER BY path, face", {"g": self.generation})
        return [Exclusion(path, size, mtime, sha, face, _box(*box)) for path, size, mtime, sha, face, *box in rows]

    def face_identities(self) -> Iterator[tuple[int, str]]:
        """(id, identity) of every live face with an identity, by id (for calibration and exports)."""
        rows = self._query(f"SELECT f.id, COALESCE(n.name, p.identity) AS identity FROM faces AS f JOIN photos AS p"
                           f" ON p.path = f.path AND {_LIVE.format(t='p')}"
                           f" LEFT JOIN {self._people} AS n ON n.id = f.id AND {_LIVE.format(t='n')}"
                           f" WHERE {_LIVE.format(t='f')} AND identity != '' ORDER BY f.id", {"g": self.generation})
        yield from rows

    # --- writing (generation self.generation, in one transaction) --------------------------

    def rollback(self, committed: int) -> None:
        """Undo what a crashed write left for generations after `committed`.

        A write's rows and its `generations` row commit in one transaction, so without a
        `generations` row after `committed` there is nothing to undo (and no table is scanned).
        """
        if not self._conn.execute("SELECT 1 FROM generations WHERE generation > ? LIMIT 1", (committed,)).fetchone():
            return
        with _transaction(self._conn):
            for table in _VERSIONED:
                self._conn.execute(f"DELETE FROM {table} WHERE added > ?", (committed,))
                self._conn.execute(f"UPDATE {table} SET removed = NULL WHERE removed > ?", (committed,))
            self._conn.execute("DELETE FROM generations WHERE generation > ?", (committed,))

    def write(self) -> StoreWrite:
        """A transaction that writes generation `self.generation` (use as a context manager)."""
        return StoreWrite(self)

    def purge(self, before: int) -> None:
        """Delete rows removed at or before generation `before` (no reader may still see them)."""
        with _transaction(self._conn):
            for table in _VERSIONED:
                self._conn.execute(f"DELETE FROM {table} WHERE removed IS NOT NULL AND removed <= ?", (before,))
            self._conn.execute("DELETE FROM generations WHERE generation < ?", (before,))

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the file (keeps the -wal file small)."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class StoreWrite:
    """The edits of one generation; committed by leaving the `with` block without an error.

    Counts are kept up to date as rows change, so the commit records them without a scan.
    """

    def __init__(self, store: IndexStore):
        self._store = store
        self._conn = store._conn
        self.g = store.generation
        self.counts: Counts | None = None

    def __enter__(self) -> StoreWrite:
        previous = self._store.recorded_counts(self.g - 1)
        if previous is None:
            raise IndexFormatError(f"metadata file '{self._store.path}' has no record of generation {self.g - 1}")
        self._faces, self._photos = previous.faces, previous.photos
        self._identity_delta: dict[str, int] = {}
        self._names: set[str] = set()  # names of people whose faces changed
        self._identities = previous.identities
        self._conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._conn.execute("ROLLBACK")
            return
        try:
            self.counts = Counts(self._faces, self._photos, self._count_identities())
            self._conn.execute("INSERT INTO generations VALUES (?, ?, ?, ?)",
                               (self.g, self.counts.faces, self.counts.photos, self.counts.identities))
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _count_identities(self) -> int:
        # Only identities whose photo count changed, or people names whose faces changed, can appear or
        # vanish: look those up. An identity exists while a photo has it or a person's face is named it.
        n = self._identities
        for identity in {x for x, d in self._identity_delta.items() if d} | self._names:
            if not identity:  # unlabelled photos: no identity
                continue
            now = self._conn.execute("SELECT count(*) FROM photos WHERE identity = ? AND removed IS NULL",
                                     (identity,)).fetchone()[0]
            before = now - self._identity_delta.get(identity, 0)
            named_now = self._named(identity, None)
            named_before = self._named(identity, self.g - 1) if identity in self._names else named_now
            n += (now > 0 or named_now) - (before > 0 or named_before)
        return n

    def _named(self, name: str, generation: int | None) -> bool:
        """Whether a live person face carries `name` now (None) or at committed `generation`."""
        live = "removed IS NULL" if generation is None else _LIVE.format(t="people").replace(":g", str(int(generation)))
        return self._conn.execute(f"SELECT 1 FROM people WHERE name = ? AND {live} LIMIT 1", (name,)).fetchone() \
            is not None

    def put_people(self, rows: Iterable[tuple[int, int, str | None, bool]]) -> None:
        """Set `(face id, person, name or None, fixed)` of faces of unlabelled photos (replacing their rows)."""
        for id_, person, name, fixed in rows:
            old = self._conn.execute("SELECT name FROM people WHERE id = ? AND removed IS NULL", (int(id_),)).fetchone()
            if old is not None:
                if old[0] is not None:
                    self._names.add(old[0])
                self._retire("people", "id = ?", (int(id_),))
            if name is not None:
                self._names.add(name)
            self._conn.execute("INSERT INTO people (id, person, name, fixed, added) VALUES (?, ?, ?, ?, ?)",
                               (int(id_), int(person), name, int(bool(fixed)), self.g))

    def _forget_people(self, ids: Sequence[int]) -> None:
        """Retire the people rows of removed faces."""
        for i in ids:
            old = self._conn.execute("SELECT name FROM people WHERE id = ? AND removed IS NULL", (int(i),)).fetchone()
            if old is not None:
                if old[0] is not None:
                    self._names.add(old[0])
                self._retire("people", "id = ?", (int(i),))

    def remove_photos(self, paths: Iterable[str]) -> list[int]:
        """Remove live photos and their faces; returns the ids of the faces removed."""
        removed_ids: list[int] = []
        for path in paths:
            row = self._conn.execute("SELECT identity, added FROM photos WHERE path = ? AND removed IS NULL",
                                     (path,)).fetchone()
            if row is None:
                continue
            identity, added = row
            ids = [r[0] for r in self._conn.execute("SELECT id FROM faces WHERE path = ? AND removed IS NULL",
                                                    (path,))]
            removed_ids += ids
            self._faces -= len(ids)
            self._photos -= 1
            self._identity_delta[identity] = self._identity_delta.get(identity, 0) - 1
            self._retire("faces", "path = ?", (path,))
            self._retire("photos", "path = ?", (path,))
            if not identity:
                self._forget_people(ids)
        return removed_ids

    def remove_faces(self, ids: Iterable[int]) -> list[int]:
        """Remove live faces by id (their photos stay, with fewer stored faces); returns those removed."""
        removed = []
        for i in ids:
            if self._conn.execute("SELECT 1 FROM faces WHERE id = ? AND removed IS NULL", (int(i),)).fetchone():
                self._retire("faces", "id = ?", (int(i),))
                removed.append(int(i))
        self._forget_people(removed)
        self._faces -= len(removed)
        return removed

    def put_photo(self, photo: Photo) -> None:
        """Insert a photo, or replace the live row of its path (its faces are kept)."""
        old = self._conn.execute("SELECT identity FROM photos WHERE path = ? AND removed IS NULL",
                                 (photo.path,)).fetchone()
        if old is not None:
            self._retire("photos", "path = ?", (photo.path,))
            self._identity_delta[old[0]] = self._identity_delta.get(old[0], 0) - 1
        else:
            self._photos += 1
        self._identity_delta[photo.identity] = self._identity_delta.get(photo.identity, 0) + 1
        self._conn.execute(
            "INSERT INTO photos (path, identity, size, mtime_ns, sha256, n_faces, source, added)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (photo.path, photo.identity, photo.size, photo.mtime_ns, photo.sha256, photo.n_faces, photo.source,
             self.g))

    def add_faces(self, rows: Iterable[tuple[str, StoredFace]]) -> None:
        """Add `(photo path, face)` rows; the photos must be live."""
        rows = [(f.id, path, f.face, *(f.box if f.box is not None else (None,) * 4), self.g) for path, f in rows]
        self._conn.executemany("INSERT INTO faces (id, path, face, x1, y1, x2, y2, added) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               rows)
        self._faces += len(rows)
        # A face that keeps its id (a moved photo) keeps the person its removal in this write retired.
        if not self._conn.execute("SELECT 1 FROM people WHERE removed = ? LIMIT 1", (self.g,)).fetchone():
            return
        for id_, *_ in rows:
            if self._conn.execute("SELECT 1 FROM people WHERE id = ? AND removed IS NULL", (id_,)).fetchone():
                continue
            self._conn.execute("INSERT INTO people (id, person, name, fixed, added) SELECT id, person, name, fixed, ?"
                               " FROM people WHERE id = ? AND removed = ? LIMIT 1", (self.g, id_, self.g))

    def exclude(self, rows: Iterable[Exclusion]) -> None:
        """Record exclusions (a folder build honours them; see `facesearch.index.sync.build`)."""
        self._conn.executemany(
            "INSERT INTO exclusions (path, size, mtime_ns, sha256, face, x1, y1, x2, y2, added)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.path, e.size, e.mtime_ns, e.sha256, e.face, *(e.box if e.box is not None else (None,) * 4), self.g)
             for e in rows])

    def lapse_exclusions(self, paths: Iterable[str]) -> None:
        """End the exclusions of `paths` (their files changed or left the folder)."""
        for path in paths:
            self._retire("exclusions", "path = ?", (path,))

    def _retire(self, table: str, where: str, params: tuple) -> None:
        # A row this generation added is simply deleted; an older one is marked removed now.
        self._conn.execute(f"DELETE FROM {table} WHERE {where} AND removed IS NULL AND added = ?", (*params, self.g))
        self._conn.execute(f"UPDATE {table} SET removed = ? WHERE {where} AND removed IS NULL", (self.g, *params))


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
    # One connection serves several threads (the service); IndexStore serialises the calls.
    conn = sqlite3.connect(target, uri=uri, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn
