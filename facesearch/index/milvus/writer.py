"""Writes to a Milvus gallery: generation-tagged rows, a commit document as the commit point, rollback.

Milvus has no transaction across entities, so a write is made safe the way a folder index makes
it safe (Lucene's `segments_N`): nothing a reader sees changes until one atomic step.

- A writer at committed generation G inserts new face rows with `added = G+1` and marks removed
  ones `removed = G+1` (an upsert of the row, vector included): readers of G filter on
  `added <= G < removed` and see neither change.
- `commit()` flushes the face collection, then replaces the `commit` document (one upsert of one
  entity) with generation G+1 and its counts, calibration and next id: that is the moment the
  write happens for every process.
- A writer that dies before that leaves rows of G+1 that no commit names. The next writer, before
  anything else, deletes rows with `added > G` and restores `removed > G` to live (`rollback`), so
  no face is ever half-written or half-removed. Rows removed at G-1 or earlier are purged then too.

One writer at a time: a `lease` document names the holder (host, pid, a random token) and is
renewed as it writes; another writer is refused with `IndexBusyError` while the lease is fresh
and its process alive. Milvus offers no compare-and-swap, so two writers starting within the same
instant could both take it: the lease is read back after a pause (which narrows that window to a few
milliseconds), and `commit()` refuses a commit whose base generation moved meanwhile, but the two
writes' rows share a generation number and may mix. Route writes to one process where writers could
start together (docs/milvus.md).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence

import numpy as np

from facesearch.embedder.core.errors import IndexBusyError
from facesearch.index.milvus.address import MilvusAddress
from facesearch.index.milvus.engine import ALIVE, translated
from facesearch.index.milvus.gallery import QUERY_BATCH, FaceRows, MilvusIndex, live_filter
from facesearch.index.milvus.meta import COMMIT_KEY, LEASE_KEY, MilvusManifest, read_doc, read_manifest, write_doc
from facesearch.index.storage.store import Box, Photo

LEASE_SECONDS = 60.0  # a lease not renewed for this long is stale (its writer hung or its host died)
LEASE_SETTLE = 0.05  # seconds between writing the lease and reading it back
INSERT_BATCH = 2_000  # rows per insert call (Milvus takes up to 64 MB a request)
RECOUNT_ABOVE = 5_000  # photos touched by a write beyond which its counts come from one pass over the rows


class MilvusWriter:
    """The one write path of a Milvus gallery: stage faces and removals, then `commit()` one generation.

    Use `open_milvus_writer`. `manifest` is the committed state the write starts from (`store` its rows);
    `added` and `removed` count what is staged.
    """

    def __init__(self, client, address: MilvusAddress, manifest: MilvusManifest, lease: str):
        self.client, self.address, self.manifest = client, address, manifest
        self.lease = lease
        self.generation = manifest.generation + 1
        self.next_id = manifest.next_id
        self.added = 0
        self.removed = 0
        self.touched: dict[str, set[str]] = {"identity": set(), "path": set()}  # for the counts at commit
        self._renewed = time.monotonic()
        self.store = FaceRows(client, address, manifest.generation)  # the committed rows

    # --- staging ---------------------------------------------------------------------------------

    def add_photo(self, photo: Photo, faces: Sequence[tuple[int, Box | None]], vectors: np.ndarray) -> list[int]:
        """Stage one photo's faces `(face position, box or None)` with their vectors `(n, d)` float32.

        Returns:
            The new faces' ids.
        """
        return self.add_photos([(photo, faces, vectors)])

    def add_photos(self, items: Sequence[tuple[Photo, Sequence[tuple[int, Box | None]], np.ndarray]]) -> list[int]:
        """`add_photo` for many photos, inserted in batches (rows tagged with the pending generation)."""
        rows, ids = [], []
        for photo, faces, vectors in items:
            for (face, box), v in zip(faces, np.asarray(vectors, np.float32)):
                self.touched["identity"].add(photo.identity)
                self.touched["path"].add(photo.path)
                ids.append(self.next_id)
                rows.append(_row(self.next_id, photo, face, box, v, self.generation))
                self.next_id += 1
        self._insert(rows)
        self.added += len(rows)
        return ids

    def remove_ids(self, ids: Sequence[int]) -> int:
        """Stage the removal of live faces `ids` (their rows get `removed` = the pending generation)."""
        rows = self.store.by_ids(ids, ["*"])
        for r in rows.values():
            r["removed"] = self.generation
            self.touched["identity"].add(r["identity"])
            self.touched["path"].add(r["path"])
        self._upsert(list(rows.values()))
        self.removed += len(rows)
        return len(rows)

    def remove_paths(self, paths: Sequence[str]) -> int:
        """Stage the removal of every live face of the photos at `paths`."""
        ids = []
        for lo in range(0, len(paths), QUERY_BATCH):
            chunk = list(paths[lo:lo + QUERY_BATCH])
            ids += [int(r["id"]) for r in self.store.query(f"path in {_strings(chunk)}", ["id"])]
        return self.remove_ids(ids) if ids else 0

    def _insert(self, rows: list[dict]) -> None:
        for lo in range(0, len(rows), INSERT_BATCH):
            self.renew()
            with translated(self.address, "writing faces"):
                self.client.insert(self.address.collection, rows[lo:lo + INSERT_BATCH])

    def _upsert(self, rows: list[dict]) -> None:
        for lo in range(0, len(rows), INSERT_BATCH):
            self.renew()
            with translated(self.address, "marking faces removed"):
                self.client.upsert(self.address.collection, rows[lo:lo + INSERT_BATCH])

    # --- the pending generation, as readers will see it -----------------------------------------------

    def view(self, manifest: MilvusManifest) -> MilvusIndex:
        """A read view of the pending generation described by `manifest` (for calibration before commit)."""
        return MilvusIndex(self.client, self.address, manifest, owns_client=False)

    def pending_manifest(self, **changes) -> MilvusManifest:
        """The next generation's manifest: the counts moved by what was staged. Only the touched identities
        and photos are read back (before and after), unless so many were touched that one pass over the
        pending rows costs less (a first build)."""
        after = FaceRows(self.client, self.address, self.generation)
        faces = self.manifest.faces + self.added - self.removed
        if len(self.touched["path"]) > RECOUNT_ABOVE or self.manifest.faces == 0:
            identities, photos = set(), set()
            for r in after.scan(["identity", "path"]):
                identities.add(r["identity"])
                photos.add(r["path"])
            counts = {"identity": len(identities), "path": len(photos)}
        else:
            before = FaceRows(self.client, self.address, self.manifest.generation)
            counts = {}
            for field, total in (("identity", self.manifest.identities), ("path", self.manifest.photos)):
                values = sorted(self.touched[field])
                counts[field] = total + len(_present(after, field, values)) - len(_present(before, field, values))
        return self.manifest.next(faces=faces, photos=counts["path"], identities=counts["identity"],
                                  next_id=self.next_id, **changes)

    # --- commit --------------------------------------------------------------------------------------

    def commit(self, manifest: MilvusManifest) -> MilvusManifest:
        """Make the staged rows generation `manifest.generation` for every process (see the module docstring).

        Raises:
            IndexBusyError: another writer committed since this one started (the lease race above).
        """
        assert manifest.generation == self.generation, "commit the pending generation"
        with translated(self.address, "flushing the gallery"):
            self.client.flush(self.address.collection)
        if (now := read_manifest(self.client, self.address, first=False).generation) != self.manifest.generation:
            # Two writers took the lease in the same instant (see the module docstring). Their rows carry the
            # same generation and cannot be told apart, so none are deleted here.
            raise IndexBusyError(f"another writer committed generation {now} to {self.address} while this one "
                                 f"wrote from {self.manifest.generation}: this write is not committed, but its rows "
                                 "may show in that generation - run the build again (it mirrors its source), and "
                                 "send writes through one process")
        write_doc(self.client, self.address, COMMIT_KEY, manifest.to_dict())
        self.manifest = manifest
        return manifest

    def renew(self) -> None:
        """Renew the lease (at most every few seconds)."""
        if time.monotonic() - self._renewed > LEASE_SECONDS / 6:
            write_doc(self.client, self.address, LEASE_KEY, _lease_doc(self.lease))
            self._renewed = time.monotonic()

    def release(self) -> None:
        lease = read_doc(self.client, self.address, LEASE_KEY)
        if lease is not None and lease.get("token") == self.lease:
            write_doc(self.client, self.address, LEASE_KEY, {"token": None})


def open_milvus_writer(client, address: MilvusAddress, wait: float = 0.0) -> MilvusWriter:
    """Take the gallery's lease, roll back what a dead writer left, and return a writer on the latest commit.

    Raises:
        IndexBusyError: another live writer holds the lease for `wait` seconds.
        IndexFormatError: there is no gallery at `address`.
    """
    manifest = read_manifest(client, address)
    token = take_lease(client, address, wait)
    try:
        manifest = read_manifest(client, address, first=False)
        rollback(client, address, manifest.generation)
        return MilvusWriter(client, address, manifest, token)
    except BaseException:
        write_doc(client, address, LEASE_KEY, {"token": None})
        raise


def take_lease(client, address: MilvusAddress, wait: float = 0.0) -> str:
    """Write this process's lease and read it back; returns its token.

    Raises:
        IndexBusyError: a fresh lease of a live writer stays for `wait` seconds.
    """
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        held = read_doc(client, address, LEASE_KEY)
        if not _held(held):
            write_doc(client, address, LEASE_KEY, _lease_doc(token))
            time.sleep(LEASE_SETTLE)
            if (read_doc(client, address, LEASE_KEY) or {}).get("token") == token:
                return token
            held = read_doc(client, address, LEASE_KEY)
        held = held or {}
        if time.monotonic() >= deadline:
            raise IndexBusyError(f"another writer holds {address} (process {held.get('pid')} on "
                                 f"{held.get('host')}, renewed {time.time() - held.get('time', 0):.0f} s ago); "
                                 "retry when it is done")
        time.sleep(0.2)


def _lease_doc(token: str) -> dict:
    return {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def _held(lease: dict | None) -> bool:
    """Whether `lease` belongs to a writer that may still be writing."""
    if not lease or not lease.get("token"):
        return False
    if time.time() - float(lease.get("time", 0)) > LEASE_SECONDS:
        return False
    if lease.get("host") == socket.gethostname():  # on this machine a dead writer is known at once
        try:
            os.kill(int(lease["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def rollback(client, address: MilvusAddress, committed: int) -> tuple[int, int]:
    """Undo what writers left after generation `committed`, and purge rows no reader needs any more.

    Returns:
        (rows deleted, removals undone).
    """
    with translated(address, "rolling back an unfinished write"):
        deleted = _delete(client, address, f"added > {committed}")
        restored = list(_scan(client, address, f"removed > {committed} and removed < {ALIVE}", ["*"]))
        for r in restored:
            r["removed"] = ALIVE
        for lo in range(0, len(restored), INSERT_BATCH):
            client.upsert(address.collection, restored[lo:lo + INSERT_BATCH])
        # Readers of generation `committed - 1` may still be searching; older ones re-read the commit first.
        _delete(client, address, f"removed < {committed}")
    return deleted, len(restored)


def _scan(client, address: MilvusAddress, where: str, fields: list[str]):
    it = client.query_iterator(address.collection, batch_size=INSERT_BATCH, filter=where, output_fields=fields)
    try:
        while page := it.next():
            yield from page
    finally:
        it.close()


def _delete(client, address: MilvusAddress, where: str) -> int:
    result = client.delete(address.collection, filter=where)
    return len(result) if isinstance(result, list) else int(result.get("delete_count", 0))


def _row(face_id: int, photo: Photo, face: int, box: Box | None, vector: np.ndarray, generation: int) -> dict:
    x1, y1, x2, y2 = box if box is not None else (0.0, 0.0, 0.0, 0.0)
    return {"id": face_id, "vector": vector.tolist(), "identity": photo.identity, "path": photo.path, "face": int(face),
            "has_box": box is not None, "x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2),
            "size": int(photo.size), "mtime_ns": int(photo.mtime_ns), "sha256": photo.sha256 or "",
            "n_faces": int(photo.n_faces), "source": photo.source, "added": generation, "removed": ALIVE}


def _present(rows: FaceRows, field: str, values: Sequence[str]) -> set[str]:
    """Which of `values` of `field` have a live row in `rows`' generation."""
    out: set[str] = set()
    for lo in range(0, len(values), QUERY_BATCH):
        out |= {r[field] for r in rows.scan([field], f"{field} in {_strings(values[lo:lo + QUERY_BATCH])}")}
    return out


def _strings(values: Sequence[str]) -> str:
    return "[" + ", ".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "]"


__all__ = ["MilvusWriter", "live_filter", "open_milvus_writer", "rollback", "take_lease"]
