"""The manifest: the one file that says which generation of an index directory is current.

A save writes a new generation's files completely, then replaces `manifest.json` atomically,
so readers see either the old index or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from embedder.core.errors import FaceSearchError, IndexFormatError, IndexMismatchError
from embedder.core.model_card import ModelCard

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# A faiss.index_factory string (metric: inner product). Kept in the manifest so that larger
# galleries can later use e.g. "IDMap2,IVF4096,Flat" or "IDMap2,HNSW32" without a new format.
DEFAULT_INDEX_TYPE = "IDMap2,Flat"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def rebuild_hint(index_dir: str | os.PathLike, source_dir: str | None = None) -> str:
    return f"rebuild with `facesearch build-index {source_dir or 'PHOTOS_DIR'} --index {index_dir}`"


@dataclass
class Manifest:
    """Contents of `manifest.json` (see index/README.md for the layout)."""

    generation: int
    vectors_file: str  # the FAISS index, e.g. gen-000003.faiss
    metadata_file: str  # the SQLite metadata, e.g. gen-000003.sqlite
    dim: int
    count: int  # vectors == rows of the faces table
    photos: int
    identities: int
    next_id: int  # ids are allocated monotonically and never reused
    model_card: ModelCard
    model_dir: str  # absolute path of the model folder used to build
    source_dir: str  # absolute path of the gallery folder; record paths are relative to it
    build: dict = field(default_factory=dict)  # resolved build settings, e.g. {"faces": "largest"}
    index_type: str = DEFAULT_INDEX_TYPE
    created: str = field(default_factory=utc_now)
    updated: str = field(default_factory=utc_now)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "generation": self.generation,
            "files": {"vectors": self.vectors_file, "metadata": self.metadata_file},
            "index_type": self.index_type,
            "metric": "inner_product",
            "dim": self.dim,
            "counts": {"vectors": self.count, "photos": self.photos, "identities": self.identities},
            "next_id": self.next_id,
            "model_card": self.model_card.to_dict(),
            "model_dir": self.model_dir,
            "source_dir": self.source_dir,
            "build": self.build,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, d: dict, index_dir: Path) -> Manifest:
        hint = rebuild_hint(index_dir, d.get("source_dir") if isinstance(d, dict) else None)
        where = f"index manifest '{index_dir / MANIFEST_FILE}'"
        if not isinstance(d, dict):
            raise IndexFormatError(f"{where} is not a JSON object - {hint}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexFormatError(f"{where} has format version {version!r}; this facesearch reads version "
                                   f"{FORMAT_VERSION} - {hint}, or use the facesearch that built it")
        try:
            m = cls(generation=int(d["generation"]), vectors_file=_plain_name(d["files"]["vectors"]),
                    metadata_file=_plain_name(d["files"]["metadata"]), dim=int(d["dim"]),
                    count=int(d["counts"]["vectors"]), photos=int(d["counts"]["photos"]),
                    identities=int(d["counts"]["identities"]), next_id=int(d["next_id"]),
                    model_card=ModelCard.from_dict(d["model_card"], source=where),
                    model_dir=str(d["model_dir"]), source_dir=str(d["source_dir"]), build=dict(d.get("build", {})),
                    index_type=str(d["index_type"]), created=str(d["created"]), updated=str(d["updated"]))
        except (KeyError, TypeError, ValueError, FaceSearchError) as e:
            raise IndexFormatError(f"{where} is damaged ({type(e).__name__}: {e}) - {hint}") from e
        if d.get("metric") != "inner_product":
            raise IndexFormatError(f"{where}: metric {d.get('metric')!r} is not supported - {hint}")
        return m

    def check_model(self, card: ModelCard, what: str = "query", fix: str = "pass --model or rebuild") -> None:
        """Raise `IndexMismatchError` unless `card` is the model this index was built with."""
        if not self.model_card.same_model(card):
            raise IndexMismatchError(f"index was built with model {self.model_card.describe()}; "
                                     f"this {what} uses {card.describe()} - {fix}")


def _plain_name(name) -> str:
    # A manifest names files inside its own directory, never elsewhere.
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"bad file name {name!r}")
    return name


def read_manifest(index_dir: str | os.PathLike) -> Manifest:
    """Read and validate `index_dir/manifest.json`.

    Raises:
        IndexFormatError: no such directory, no manifest, unreadable JSON, unknown format version.
    """
    index_dir = Path(index_dir)
    hint = rebuild_hint(index_dir)
    if not index_dir.is_dir():
        what = "is not a directory" if index_dir.exists() else "does not exist"
        raise IndexFormatError(f"no index at '{index_dir}': the path {what} - build one with "
                               f"`facesearch build-index PHOTOS_DIR --index {index_dir}`")
    path = index_dir / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexFormatError(f"'{index_dir}' holds no {MANIFEST_FILE}: it is not a facesearch index, or its "
                               f"first build did not finish - {hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"cannot read '{path}': {e} - {hint}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"index manifest '{path}' is not valid JSON ({e}) - {hint}") from e
    return Manifest.from_dict(data, index_dir)
