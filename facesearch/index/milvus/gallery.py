"""A Milvus gallery opened for search: vectors and face rows read at one committed generation.

`MilvusIndex` offers what `facesearch.index.openset` and `facesearch.index.query.FaceSearcher` use
of a `GalleryIndex` (`search`, `records`, `vectors`, `card`, `manifest`, `store`), so identity
ranking, the open-set verdict and its calibration run unchanged on vectors read back from Milvus.
Every search and read filters on `added <= G < removed` (G: its generation): rows a writer adds
or removes after G stay invisible until it commits, and `refresh()` moves to the newest commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.milvus.address import MilvusAddress
from facesearch.index.milvus.engine import MAX_TOP_K, connect, disconnect, translated
from facesearch.index.milvus.meta import MilvusManifest, read_manifest
from facesearch.index.storage.gallery import check_search
from facesearch.index.storage.store import FaceRecord, Photo

RECORD_FIELDS = ["id", "identity", "path", "face", "has_box", "x1", "y1", "x2", "y2", "size", "mtime_ns", "sha256"]
PHOTO_FIELDS = ["path", "identity", "size", "mtime_ns", "sha256", "n_faces", "source"]
QUERY_BATCH = 1024  # queries per search call, ids per `id in [...]` read (Milvus caps both at 16,384)
SCAN_BATCH = 10_000  # rows per page of a full scan
# Identity lookups one filter query each before reading every face's identity once: a filtered query costs
# Milvus Lite a pass over the rows (40 ms at 2,000 faces on 2 busy cores), calibration asks for ~1,000 identities.
LOOKUPS_BEFORE_SCAN = 16
KNOWN_RECORDS = 200_000  # records kept from search hits: each query's matches then need no second round trip
HIT_FIELDS = [f for f in RECORD_FIELDS if f != "id"]


def live_filter(generation: int) -> str:
    """The rows generation `generation` holds (writer.py: `added <= G < removed`)."""
    return f"added <= {int(generation)} and removed > {int(generation)}"


def record_of(row: dict) -> FaceRecord:
    box = (float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"])) if row["has_box"] else None
    return FaceRecord(int(row["id"]), row["path"], row["identity"], int(row["face"]), box, int(row["size"]),
                      int(row["mtime_ns"]), row["sha256"])


class FaceRows:
    """The face rows of one generation: records, identities (what `GalleryIndex.store` answers)."""

    def __init__(self, client, address: MilvusAddress, generation: int):
        self.client, self.address, self.generation = client, address, generation
        self.where = live_filter(generation)
        self._lookups = 0
        self.known: dict[int, FaceRecord] = {}  # records that came back with search hits (see MilvusIndex.search)
        self._ids_of: dict[str, list[int]] | None = None  # identity -> live ids, once read (a generation never changes)

    def scan(self, fields: list[str], where: str | None = None) -> Iterator[dict]:
        """Every live row's `fields`, in pages (a full scan of the collection)."""
        expr = self.where if where is None else f"({self.where}) and ({where})"
        with translated(self.address, "reading the gallery's faces"):
            it = self.client.query_iterator(self.address.collection, batch_size=SCAN_BATCH, filter=expr,
                                            output_fields=fields)
            try:
                while page := it.next():
                    yield from page
            finally:
                it.close()

    def query(self, where: str, fields: list[str]) -> list[dict]:
        with translated(self.address, "reading the gallery's faces"):
            return self.client.query(self.address.collection, filter=f"({self.where}) and ({where})",
                                     output_fields=fields)

    def by_ids(self, ids: Sequence[int], fields: list[str]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        for lo in range(0, len(unique), QUERY_BATCH):
            chunk = unique[lo:lo + QUERY_BATCH]
            out.update((int(r["id"]), r) for r in self.query(f"id in {chunk}", ["id", *fields]))
        return out

    def records(self, ids: Sequence[int]) -> list[FaceRecord]:
        """Records of `ids`, in order (KeyError for an id that is not live, e.g. -1 padding)."""
        missing = [int(i) for i in ids if int(i) not in self.known]
        found = {i: record_of(r) for i, r in self.by_ids(missing, RECORD_FIELDS).items()} if missing else {}
        return [self.known.get(int(i)) or found[int(i)] for i in ids]

    def remember(self, hits) -> None:
        """Keep the records a search returned with its hits (bounded: a long-lived reader forgets them all at once)."""
        if len(self.known) > KNOWN_RECORDS:
            self.known.clear()
        for h in hits:
            self.known[int(h["id"])] = record_of(h["entity"] | {"id": h["id"]})

    def face_identities(self) -> Iterator[tuple[int, str]]:
        """(id, identity) of every live face, by id."""
        rows = sorted((int(r["id"]), r["identity"]) for r in self.scan(["id", "identity"]))
        yield from rows

    def identities(self) -> list[tuple[str, int, int]]:
        """(identity, photos, faces) of live identities, sorted by name."""
        photos: dict[str, set[str]] = {}
        faces: dict[str, int] = {}
        for r in self.scan(["identity", "path"]):
            photos.setdefault(r["identity"], set()).add(r["path"])
            faces[r["identity"]] = faces.get(r["identity"], 0) + 1
        return [(name, len(photos[name]), faces[name]) for name in sorted(faces)]

    def ids_of_identity(self, identity: str) -> list[int]:
        """Live face ids of `identity`, ascending (after a few lookups, from one read of every face's identity)."""
        self._lookups += 1
        if self._ids_of is None and self._lookups > LOOKUPS_BEFORE_SCAN:
            self._ids_of = {}
            for face, name in self.face_identities():
                self._ids_of.setdefault(name, []).append(face)
        if self._ids_of is not None:
            return list(self._ids_of.get(identity, []))
        return sorted(int(r["id"]) for r in self.query(f"identity == {_quoted(identity)}", ["id"]))

    def photos(self) -> dict[str, Photo]:
        """Every live photo (those with a stored face), by path."""
        return {r["path"]: Photo(r["path"], r["identity"], int(r["size"]), int(r["mtime_ns"]), r["sha256"],
                                 int(r["n_faces"]), r["source"]) for r in self.scan(PHOTO_FIELDS)}

    def count(self) -> int:
        with translated(self.address, "counting the gallery's faces"):
            rows = self.client.query(self.address.collection, filter=self.where, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])


class MilvusIndex:
    """A Milvus gallery opened for search at its latest commit. Use `MilvusIndex.open(address, token)`.

    Scores are inner products of L2-normalised vectors (cosine similarity): higher is more alike.
    """

    def __init__(self, client, address: MilvusAddress, manifest: MilvusManifest, owns_client: bool = True):
        self.client = client
        self.address = address
        self.manifest = manifest
        self.store = FaceRows(client, address, manifest.generation)
        self._owns = owns_client

    @classmethod
    def open(cls, address: MilvusAddress, token: str | None = None, card: ModelCard | None = None,
             client=None) -> MilvusIndex:
        """Connect and read the latest commit of the gallery at `address`.

        Raises:
            IndexFormatError: no gallery there. IndexMismatchError: `card` is another model.
            MilvusUnavailableError, MilvusAuthError: see `engine.connect`.
        """
        owns = client is None
        client = connect(address, token) if client is None else client
        manifest = read_manifest(client, address)
        if card is not None:
            manifest.check_model(card)
        return cls(client, address, manifest, owns)

    def refresh(self) -> MilvusIndex:
        """This index moved to the gallery's latest commit (one small read: the commit document)."""
        latest = read_manifest(self.client, self.address, first=False)
        if latest.generation != self.manifest.generation:
            self.manifest = latest
            self.store = FaceRows(self.client, self.address, latest.generation)
        return self

    # --- what FaceSearcher and the open-set code use -------------------------------------------------

    @property
    def card(self) -> ModelCard:
        return self.manifest.model_card

    @property
    def model_dir(self) -> Path:
        return Path(self.manifest.model_dir)

    @property
    def index_dir(self) -> str:
        """The gallery's address (the `index` of a query's answer)."""
        return str(self.address)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def exact(self) -> bool:
        """FLAT searches every vector; a widening search past Milvus's top-k limit is not exhaustive."""
        return self.manifest.index.exact and len(self) <= MAX_TOP_K

    def __len__(self) -> int:
        return self.manifest.faces

    def check_model(self, card: ModelCard) -> None:
        self.manifest.check_model(card)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar live vectors of each query (as `GalleryIndex.search`).

        Args:
            vectors: `(m, d)` float32, rows L2-normalised.
            k: neighbours per query (at most `len(self)` and Milvus's 16,384 come back).

        Returns:
            scores `(m, k')` float32, best first, and ids `(m, k')` int64, padded with -inf / -1
            where a search found fewer (an approximate index may).

        Raises:
            TypeError, ValueError: not a 2-d float32 array, or `k < 1`.
            IndexMismatchError: `d` is not the gallery's dimension.
        """
        k = min(check_search(vectors, k, self.dim, self.card, f"the Milvus gallery {self.address}"), len(self), MAX_TOP_K)
        m = len(vectors)
        scores = np.full((m, k), -np.inf, np.float32)
        ids = np.full((m, k), -1, np.int64)
        if k == 0:
            return scores, ids
        params = {"metric_type": "IP", "params": self.manifest.index.search_params}
        for lo in range(0, m, QUERY_BATCH):
            with translated(self.address, "searching the gallery"):
                hits = self.client.search(self.address.collection, data=vectors[lo:lo + QUERY_BATCH].tolist(),
                                          limit=k, filter=self.store.where, search_params=params,
                                          output_fields=HIT_FIELDS, anns_field="vector")
            for row, found in enumerate(hits, start=lo):
                self.store.remember(found)
                n = len(found)
                ids[row, :n] = [h["id"] for h in found]
                scores[row, :n] = [h["distance"] for h in found]
        return scores, ids

    def ids(self) -> np.ndarray:
        """Every live id, sorted, `(len(self),)` int64 (a full scan)."""
        return np.sort(np.fromiter((int(r["id"]) for r in self.store.scan(["id"])), np.int64))

    def records(self, ids: Sequence[int] | np.ndarray) -> list[FaceRecord]:
        return self.store.records(np.asarray(ids, np.int64).reshape(-1).tolist())

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of live `ids`, `(len(ids), d)` float32, in order (KeyError: not live)."""
        ids = np.asarray(ids, np.int64).reshape(-1).tolist()
        found = self.store.by_ids(ids, ["vector"])
        out = np.empty((len(ids), self.dim), np.float32)
        for j, i in enumerate(ids):
            out[j] = found[i]["vector"]
        return out

    def close(self) -> None:
        if self._owns:
            disconnect(self.client, self.address)

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        return (f"MilvusIndex('{self.address}', {m.faces} vectors ({m.index.index_type}), {m.identities} identities, "
                f"model {self.card.describe()}, generation {m.generation})")


def _quoted(text: str) -> str:
    """A string literal of Milvus's filter language."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
