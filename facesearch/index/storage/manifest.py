"""The manifest: the one file that says which generation of an index directory is current.

It is the index's commit point (Lucene's `segments_N`): it names the segments, the tombstone
file and the metadata generation that together make the index. A write prepares everything
under names no manifest refers to, then replaces `manifest.json` atomically, so readers see
either the old index or the new one, never a mixture.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from facesearch.embedder.core.errors import FaceSearchError, IndexFormatError, IndexMismatchError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.storage.segments import VECTOR_DTYPES, SegmentInfo

FORMAT_VERSION = 2
OLD_FORMAT_VERSIONS = (1,)  # upgraded in place by the next write (`facesearch.index.storage.upgrade`)
MANIFEST_FILE = "manifest.json"
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def rebuild_hint(index_dir: str | os.PathLike, source_dir: str | None = None) -> str:
    return f"rebuild with `facesearch build-index {source_dir or 'PHOTOS_DIR'} --index {index_dir}`"


def tombstone_name(generation: int) -> str:
    return f"tomb-{generation:06d}.npy"


@dataclass
class IndexPolicy:
    """How the index chooses and keeps its segments' search structures."""

    index_type: str = "auto"  # auto | flat | hnsw | ivf (see facesearch.index.storage.ann.choose_spec)
    memory_budget: int | None = None  # bytes the vectors' search structures may take; None: the default share
    vector_dtype: str = "float32"  # of the raw vectors kept beside every segment
    target_recall: float = 0.99  # floor recall against exact search that tuning aims for (ann/README.md, "Tuning")

    def updated(self, *, index_type: str | None = None, memory_budget: int | str | None = None,
                vector_dtype: str | None = None, target_recall: float | None = None) -> IndexPolicy:
        """This policy with the fields given changed (None keeps one); `memory_budget` may be "8G".

        Raises:
            FaceSearchError: an unknown index type or vector dtype, or a size that cannot be read.
        """
        if index_type is not None and index_type not in INDEX_TYPES:
            raise FaceSearchError(f"--index-type takes one of {', '.join(INDEX_TYPES)}, got '{index_type}'")
        if vector_dtype is not None and vector_dtype not in VECTOR_DTYPES:
            raise FaceSearchError(f"--vector-dtype takes one of {', '.join(VECTOR_DTYPES)}, got '{vector_dtype}'")
        changes = {"index_type": index_type, "vector_dtype": vector_dtype, "target_recall": target_recall,
                   "memory_budget": parse_bytes(memory_budget) if memory_budget is not None else None}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return {"index_type": self.index_type, "memory_budget": self.memory_budget,
                "vector_dtype": self.vector_dtype, "target_recall": self.target_recall}

    @classmethod
    def from_dict(cls, d: dict) -> IndexPolicy:
        policy = cls(str(d.get("index_type", "auto")), None if d.get("memory_budget") is None else
                     int(d["memory_budget"]), str(d.get("vector_dtype", "float32")),
                     float(d.get("target_recall", 0.99)))
        if policy.index_type not in INDEX_TYPES:
            raise ValueError(f"index type {policy.index_type!r} is not one of {INDEX_TYPES}")
        return policy


def parse_bytes(text: str | int) -> int:
    """'8G', '512M', '1.5g', '1000000' (or an int) -> bytes (powers of 1024 for K, M, G, T).

    Raises:
        FaceSearchError: not a size, or not positive.
    """
    if isinstance(text, int):
        value, number = str(text), float(text)
    else:
        units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        value = text.strip().lower().removesuffix("b").removesuffix("i")
        scale = units.get(value[-1:], 1)
        try:
            number = float(value[:-1] if value[-1:] in units else value) * scale
        except ValueError:
            raise FaceSearchError(f"cannot read '{text}' as a size: use bytes or a number with K, M, G or T, e.g. 8G") \
                from None
    if number <= 0:
        raise FaceSearchError(f"a memory budget must be positive, got '{text}'")
    return int(number)


@dataclass
class Manifest:
    """Contents of `manifest.json` (see index/README.md for the layout)."""

    generation: int
    dim: int
    segments: list[SegmentInfo]
    tombstones: str | None  # file of ids removed but still in segments, or None
    dead: int  # ids in that file
    faces: int  # live faces == sum(segment counts) - dead == live metadata face rows
    photos: int
    identities: int
    next_id: int  # ids are allocated monotonically and never reused
    next_segment: int
    model_card: ModelCard
    model_dir: str  # absolute path of the model folder used to build
    source_dir: str  # absolute path of the gallery folder; folder photos' paths are relative to it
    metadata_file: str  # the SQLite metadata (facesearch.index.storage.store), e.g. meta-000001.sqlite
    build: dict = field(default_factory=dict)  # settings every vector depends on, e.g. {"faces": "largest"}
    policy: IndexPolicy = field(default_factory=IndexPolicy)
    calibration: dict | None = None  # the open-set threshold estimate (facesearch.index.openset.calibration)
    people: dict | None = None  # the parameters the people of unlabelled photos were grouped with (sync/people.py)
    created: str = field(default_factory=utc_now)
    updated: str = field(default_factory=utc_now)
    format_version: int = FORMAT_VERSION

    @property
    def count(self) -> int:
        """Live vectors (the faces a search can return)."""
        return self.faces

    @property
    def stored(self) -> int:
        """Rows in the segments, live or tombstoned."""
        return sum(s.count for s in self.segments)

    @property
    def files(self) -> set[str]:
        """Every file this manifest names (besides itself)."""
        names = {self.metadata_file} | {f for s in self.segments for f in s.files.values()}
        return names | ({self.tombstones} if self.tombstones else set())

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "generation": self.generation,
            "metric": "inner_product",
            "dim": self.dim,
            "segments": [s.to_dict() for s in self.segments],
            "tombstones": {"file": self.tombstones, "count": self.dead},
            "metadata": self.metadata_file,
            "counts": {"faces": self.faces, "stored": self.stored, "photos": self.photos,
                       "identities": self.identities},
            "next_id": self.next_id,
            "next_segment": self.next_segment,
            "index": self.policy.to_dict(),
            "calibration": self.calibration,
            "people": self.people,
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
        if version in OLD_FORMAT_VERSIONS:
            raise IndexFormatError(f"{where} has the old format version {version}; this facesearch reads version "
                                   f"{FORMAT_VERSION} - upgrade it in place (nothing is embedded again) with "
                                   f"`facesearch compact --index {index_dir}`, or any `facesearch build-index`")
        if version != FORMAT_VERSION:
            raise IndexFormatError(f"{where} has format version {version!r}; this facesearch reads version "
                                   f"{FORMAT_VERSION} - {hint}, or use the facesearch that built it")
        try:
            tomb = d["tombstones"]
            m = cls(generation=int(d["generation"]), dim=int(d["dim"]),
                    segments=[SegmentInfo.from_dict(s) for s in d["segments"]],
                    tombstones=None if tomb["file"] is None else _plain_name(tomb["file"]), dead=int(tomb["count"]),
                    faces=int(d["counts"]["faces"]), photos=int(d["counts"]["photos"]),
                    identities=int(d["counts"]["identities"]), next_id=int(d["next_id"]),
                    next_segment=int(d["next_segment"]), model_card=ModelCard.from_dict(d["model_card"], source=where),
                    model_dir=str(d["model_dir"]), source_dir=str(d["source_dir"]), build=dict(d.get("build", {})),
                    policy=IndexPolicy.from_dict(d.get("index", {})), calibration=d.get("calibration"),
                    people=d.get("people"), metadata_file=_plain_name(d["metadata"]), created=str(d["created"]), updated=str(d["updated"]))
        except (KeyError, TypeError, ValueError, FaceSearchError) as e:
            raise IndexFormatError(f"{where} is damaged ({type(e).__name__}: {e}) - {hint}") from e
        if d.get("metric") != "inner_product":
            raise IndexFormatError(f"{where}: metric {d.get('metric')!r} is not supported - {hint}")
        if m.stored - m.dead != m.faces:
            raise IndexFormatError(f"{where} is damaged: its segments hold {m.stored} vectors, {m.dead} of them "
                                   f"removed, but it counts {m.faces} faces - {hint}")
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


def read_manifest_data(index_dir: str | os.PathLike) -> dict:
    """The raw JSON of `index_dir/manifest.json`.

    Raises:
        IndexFormatError: no such directory, no manifest, unreadable JSON.
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
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"index manifest '{path}' is not valid JSON ({e}) - {hint}") from e


def read_manifest(index_dir: str | os.PathLike) -> Manifest:
    """Read and validate `index_dir/manifest.json`.

    Raises:
        IndexFormatError: no such directory, no manifest, unreadable JSON, unknown or old format version.
    """
    return Manifest.from_dict(read_manifest_data(index_dir), Path(index_dir))
