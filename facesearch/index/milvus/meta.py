"""The gallery's commit point: one JSON document in the metadata collection that every process reads.

What a folder index keeps in `manifest.json` (model card, model folder, index type, calibration,
counts, the next face id) is the `commit` document of `COLLECTION__facesearch`. Replacing it (one
upsert of one entity, atomic in Milvus) is what makes a generation visible; the `lease` document
says which writer holds the gallery (writer.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from facesearch.embedder.core.errors import IndexFormatError, IndexMismatchError, MilvusError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.milvus.address import MilvusAddress
from facesearch.index.milvus.engine import DOC_MAX, IndexChoice, translated
from facesearch.index.storage.manifest import utc_now

FORMAT = "facesearch-milvus-1"
COMMIT_KEY = "commit"
LEASE_KEY = "lease"


@dataclass(frozen=True)
class MilvusManifest:
    """The committed state of a Milvus gallery (the `commit` document)."""

    generation: int
    dim: int
    faces: int
    photos: int
    identities: int
    next_id: int  # face ids are allocated here, once, never reused by a committed generation
    model_card: ModelCard
    model_dir: str
    source_dir: str
    index: IndexChoice
    build: dict = field(default_factory=dict)  # {"faces": "largest", "crops": ...}: what every vector depends on
    calibration: dict | None = None
    created: str = field(default_factory=utc_now)
    updated: str = field(default_factory=utc_now)
    format: str = FORMAT

    def check_model(self, card: ModelCard, what: str = "query", fix: str = "pass --model or rebuild") -> None:
        """Raise `IndexMismatchError` unless `card` is the model this gallery was built with."""
        if not self.model_card.same_model(card):
            raise IndexMismatchError(f"the Milvus gallery was built with model {self.model_card.describe()}; "
                                     f"this {what} uses {card.describe()} - {fix}")

    def next(self, **changes) -> MilvusManifest:
        """The manifest of the following generation with `changes`."""
        return replace(self, generation=self.generation + 1, updated=utc_now(), **changes)

    def to_dict(self) -> dict:
        return {"format": self.format, "generation": self.generation, "dim": self.dim, "faces": self.faces,
                "photos": self.photos, "identities": self.identities, "next_id": self.next_id,
                "model_card": self.model_card.to_dict(), "model_dir": self.model_dir, "source_dir": self.source_dir,
                "index": self.index.to_dict(), "build": self.build, "calibration": self.calibration,
                "created": self.created, "updated": self.updated}

    @classmethod
    def from_dict(cls, d: dict) -> MilvusManifest:
        if d.get("format") != FORMAT:
            raise IndexFormatError(f"the gallery's commit point has format {d.get('format')!r}; this facesearch "
                                   f"reads {FORMAT!r}")
        return cls(int(d["generation"]), int(d["dim"]), int(d["faces"]), int(d["photos"]), int(d["identities"]),
                   int(d["next_id"]), ModelCard.from_dict(d["model_card"], "the Milvus gallery's model card"),
                   d["model_dir"], d["source_dir"], IndexChoice.from_dict(d["index"]), dict(d.get("build") or {}),
                   d.get("calibration"), d.get("created", ""), d.get("updated", ""))


def read_doc(client, address: MilvusAddress, key: str) -> dict | None:
    """The document `key` of the metadata collection, or None."""
    with translated(address, f"reading the gallery's {key} document"):
        rows = client.query(address.meta_collection, filter=f'key == "{key}"', output_fields=["doc"])
    return json.loads(rows[0]["doc"]) if rows else None


def write_doc(client, address: MilvusAddress, key: str, doc: dict) -> None:
    """Replace the document `key` (one upsert: readers see the old or the new one, never a mix)."""
    text = json.dumps(doc, sort_keys=True)
    if len(text) > DOC_MAX:
        raise MilvusError(f"the gallery's {key} document is {len(text)} characters; Milvus keeps at most {DOC_MAX}")
    with translated(address, f"writing the gallery's {key} document"):
        client.upsert(address.meta_collection, [{"key": key, "doc": text, "unused": [0.0, 0.0]}])


def read_manifest(client, address: MilvusAddress, *, first: bool = True) -> MilvusManifest:
    """The committed state of the gallery at `address`.

    `first`: this client's first look: check that both collections exist and load them (a Milvus
    Lite data path reopened by a new process starts with its collections released); later reads
    (each query's refresh) read the commit document alone.

    Raises:
        IndexFormatError: no facesearch gallery there (yet), or an unreadable commit point.
    """
    if first:
        with translated(address, "looking for the gallery"):
            present = client.has_collection(address.meta_collection) and client.has_collection(address.collection)
            if present:
                client.load_collection(address.meta_collection)
                client.load_collection(address.collection)
        if not present:
            raise IndexFormatError(f"there is no facesearch gallery at {address} yet: build one with "
                                   f"`facesearch build-index PHOTOS --index {address}` (or --from-embeddings SHARDS)")
    doc = read_doc(client, address, COMMIT_KEY)
    if doc is None:
        raise IndexFormatError(f"the gallery at {address} has no commit yet (its first build did not finish): "
                               f"run the build again, or `facesearch build-index ... --rebuild`")
    try:
        return MilvusManifest.from_dict(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise IndexFormatError(f"the commit point of the gallery at {address} is damaged ({e}) - rebuild it with "
                               "--rebuild") from e
