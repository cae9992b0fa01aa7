"""The shard format itself: schema and metadata keys, rows in memory, and the checks every row passes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facesearch.embedder.core.constants import Box
from facesearch.embedder.core.errors import EmbeddingShardError

FORMAT_VERSION = 1
FORMAT_KEY = b"facesearch.embeddings.format_version"
BUILD_KEY = b"facesearch.embeddings.build"
REQUIRED_COLUMNS = ("path", "identity", "face", "embedding")
OPTIONAL_COLUMNS = ("box", "sha256", "size", "mtime_ns")
NORM_TOLERANCE = 1e-3  # |norm - 1| allowed, as for the embedder's own output (pipeline.check_embeddings)
FORMAT_HELP = ("an embedding shard needs columns path (string), identity (string), face (int32) and embedding "
               "(list of float32, the model's embedding size); box, sha256, size, mtime_ns are optional")


@dataclass
class EmbeddingRows:
    """Rows of an embedding shard, column by column (`n` rows).

    `sha256`, `size` and `mtime_ns` are None when the column is absent; `file` and `first_row`
    say where rows read from disk came from (`first_row` is 0-based within `file`).
    """

    path: list[str]
    identity: list[str]
    face: np.ndarray  # (n,) int32
    embedding: np.ndarray  # (n, d) float32, rows L2-normalised
    box: list[Box | None]
    sha256: list[str | None] | None = None
    size: list[int | None] | None = None
    mtime_ns: list[int | None] | None = None
    file: str | None = None
    first_row: int = 0

    def __len__(self) -> int:
        return len(self.path)

    @classmethod
    def concat(cls, parts: Sequence[EmbeddingRows], dim: int) -> EmbeddingRows:
        """All rows of `parts` in order (`dim` gives the shape when there are none)."""
        def joined(name: str):
            cols = [getattr(p, name) for p in parts]
            return None if not cols or any(c is None for c in cols) else [v for c in cols for v in c]

        if not parts:
            return cls([], [], np.empty(0, np.int32), np.empty((0, dim), np.float32), [])
        return cls([v for p in parts for v in p.path], [v for p in parts for v in p.identity],
                   np.concatenate([p.face for p in parts]).astype(np.int32),
                   np.concatenate([p.embedding for p in parts]).astype(np.float32, copy=False),
                   [v for p in parts for v in p.box], joined("sha256"), joined("size"), joined("mtime_ns"))

    def to_table(self, schema: pa.Schema) -> pa.Table:
        """These rows as a table of `schema` (`shard_schema`); absent optional columns become nulls."""
        n, d = self.embedding.shape
        flat = pa.array(np.ascontiguousarray(self.embedding, np.float32).reshape(-1), pa.float32())
        boxes = [None if b is None else [float(x) for x in b] for b in self.box]
        cols = {"path": pa.array(self.path, pa.string()), "identity": pa.array(self.identity, pa.string()),
                "face": pa.array(np.asarray(self.face, np.int32), pa.int32()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, d),
                "box": pa.array(boxes, pa.list_(pa.float32(), 4)),
                "sha256": pa.array(self.sha256 or [None] * n, pa.string()),
                "size": pa.array(self.size or [None] * n, pa.int64()),
                "mtime_ns": pa.array(self.mtime_ns or [None] * n, pa.int64())}
        return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema)


def shard_schema(dim: int, build: dict | None = None) -> pa.Schema:
    """The Parquet schema `ShardWriter` writes for `dim`-d vectors, with the format metadata."""
    return pa.schema([
        pa.field("path", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("face", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("sha256", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
    ], metadata={FORMAT_KEY: str(FORMAT_VERSION).encode(), BUILD_KEY: json.dumps(build or {}, sort_keys=True).encode()})


def build_of(schema: pa.Schema) -> dict:
    """The build settings a schema's metadata records ({} when absent or unreadable)."""
    raw = (schema.metadata or {}).get(BUILD_KEY)
    try:
        build = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return build if isinstance(build, dict) else {}


def _label(file: str | os.PathLike | None) -> str:
    return f"'{file}'" if file is not None else "the rows given to ShardWriter.write:"


def check_vectors(vectors: np.ndarray, file: str | os.PathLike | None = None, first_row: int = 0) -> None:
    """Refuse non-finite or non-unit rows of `(n, d)` `vectors`.

    Raises:
        EmbeddingShardError: the first bad row, naming `file` and the 0-based row `first_row + i`.
    """
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = first_row + int(np.flatnonzero(~finite)[0])
        raise EmbeddingShardError(f"{_label(file)} row {row}: the embedding holds NaN or infinite values; every "
                                  "value must be a finite number", file, row)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise EmbeddingShardError(f"{_label(file)} row {first_row + i}: the embedding's L2 norm is {norms[i]:.6g}, "
                                  f"expected 1 (within {NORM_TOLERANCE:g}) - L2-normalise the vectors (v / ||v||) "
                                  "before writing them", file, first_row + i)


def check_keys(paths: Sequence[str], identities: Sequence[str], faces: np.ndarray,
               file: str | os.PathLike | None = None, first_row: int = 0) -> None:
    """Refuse paths that are not relative '/'-separated paths, empty identities, negative faces."""
    for i, (path, identity) in enumerate(zip(paths, identities)):
        pure = PurePosixPath(path)
        if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
            raise EmbeddingShardError(f"{_label(file)} row {first_row + i}: path {path!r} is not a relative "
                                      "'/'-separated path inside the gallery folder", file, first_row + i)
        if not identity:
            raise EmbeddingShardError(f"{_label(file)} row {first_row + i}: empty identity for {path!r}",
                                      file, first_row + i)
    bad = np.flatnonzero((np.asarray(faces) < 0) | (np.asarray(faces) > np.iinfo(np.int32).max))
    if len(bad):
        row = first_row + int(bad[0])
        raise EmbeddingShardError(f"{_label(file)} row {row}: face {int(faces[bad[0]])} is not a face number "
                                  "(0 for a photo's first face, up to 2**31 - 1)", file, row)


def check_boxes(boxes: Sequence[Box | None], file: str | os.PathLike | None = None, first_row: int = 0) -> None:
    """Refuse a box that is not null or 4 finite numbers."""
    for i, box in enumerate(boxes):
        if box is not None and (len(box) != 4 or not all(np.isfinite(box))):
            raise EmbeddingShardError(f"{_label(file)} row {first_row + i}: box {list(box)} is not 4 finite "
                                      "numbers (x1, y1, x2, y2) or null", file, first_row + i)


def check_schema(schema: pa.Schema, file: str | os.PathLike, dim: int | None,
                 required: Sequence[str] = REQUIRED_COLUMNS) -> None:
    """Refuse a file without the `required` columns, with wrong column types, another fixed vector
    length than `dim`, or another format version than FORMAT_VERSION."""
    missing = [c for c in required if c not in schema.names]
    if missing:
        raise EmbeddingShardError(f"'{file}' has no column(s) {', '.join(repr(c) for c in missing)} (it has "
                                  f"{', '.join(schema.names) or 'none'}): {FORMAT_HELP}", file)
    version = (schema.metadata or {}).get(FORMAT_KEY)
    if version is not None and version != str(FORMAT_VERSION).encode():
        raise EmbeddingShardError(f"'{file}' is embedding format version {version.decode(errors='replace')}; this "
                                  f"facesearch reads version {FORMAT_VERSION} - write it with this facesearch", file)
    kinds = {"path": (_is_string, "string"), "identity": (_is_string, "string"), "face": (pa.types.is_integer, "int32"),
             "embedding": (_is_float_list, "list of float32"), "box": (_is_float_list, "list of 4 float32"),
             "sha256": (_is_string, "string"), "size": (pa.types.is_integer, "int64"),
             "mtime_ns": (pa.types.is_integer, "int64")}
    for name, (ok, expected) in kinds.items():
        if name in schema.names and not ok(schema.field(name).type):
            raise EmbeddingShardError(f"'{file}': column '{name}' is {schema.field(name).type}, expected {expected}",
                                      file)
    t = schema.field("embedding").type if "embedding" in schema.names else None
    if dim is not None and t is not None and pa.types.is_fixed_size_list(t) and t.list_size != dim:
        raise EmbeddingShardError(f"'{file}' row 0: the embedding has {t.list_size} values (in every row of this "
                                  f"file), expected {dim} (the model's embedding size)", file, 0)


def refuse_nulls(batch: pa.RecordBatch | pa.Table, names: Sequence[str], file: str | os.PathLike,
                 first_row: int) -> None:
    """Refuse a null in any of the columns `names`, naming its row."""
    for name in names:
        col = batch.column(name)
        if col.null_count:
            row = first_row + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise EmbeddingShardError(f"'{file}' row {row}: '{name}' is null; every row needs one", file, row)


def vectors_of(column: pa.Array | pa.ChunkedArray, dim: int, file: str | os.PathLike, first_row: int) -> np.ndarray:
    """`(n, dim)` float32 from a list column (nulls already refused), after checking every row.

    Raises:
        EmbeddingShardError: the first row of another length than `dim`, non-finite or not unit.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        if column.type.list_size != dim:
            raise EmbeddingShardError(f"'{file}' row {first_row}: the embedding has {column.type.list_size} values, "
                                      f"expected {dim} (the model's embedding size)", file, first_row)
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != dim)
        if len(wrong):
            i = int(wrong[0])
            raise EmbeddingShardError(f"'{file}' row {first_row + i}: the embedding has {int(lengths[i])} values, "
                                      f"expected {dim} (the model's embedding size)", file, first_row + i)
    values = column.flatten().to_numpy(zero_copy_only=False)
    vectors = np.ascontiguousarray(values, dtype=np.float32).reshape(len(column), dim)
    check_vectors(vectors, file, first_row)
    return vectors


def first_length(column: pa.Array | pa.ChunkedArray) -> int:
    """The length of the first vector of a list column."""
    if pa.types.is_fixed_size_list(column.type):
        return column.type.list_size
    return int(pc.list_value_length(column)[0].as_py() or 0)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_float_list(t: pa.DataType) -> bool:
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    return is_list and pa.types.is_floating(t.value_type)
