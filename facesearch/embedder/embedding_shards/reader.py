"""Reading shards: open a folder (card, files, counts), stream its checked rows; or one file's query vectors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facesearch.embedder.core.constants import Box
from facesearch.embedder.core.errors import EmbeddingShardError, IndexMismatchError
from facesearch.embedder.core.model_card import CARD_FILE, ModelCard
from facesearch.embedder.embedding_shards.format import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    EmbeddingRows,
    build_of,
    check_boxes,
    check_keys,
    check_schema,
    first_length,
    refuse_nulls,
    vectors_of,
)

READ_BATCH_ROWS = 8192


@dataclass(frozen=True)
class ShardFolder:
    """An embedding shard folder opened for reading: its card, files and row count (no rows read yet)."""

    folder: Path
    card: ModelCard
    files: tuple[Path, ...]
    num_rows: int
    build: dict = field(default_factory=dict)  # the first file's build metadata ({} if absent)

    def batches(self, batch_size: int = READ_BATCH_ROWS) -> Iterator[EmbeddingRows]:
        """Every row, in file-name order then row order, as checked `EmbeddingRows` of up to `batch_size`.

        Holds one batch and the set of (path, face) keys seen in memory.

        Raises:
            EmbeddingShardError: a bad row (wrong length, null, NaN or infinite, not L2-normalised,
                bad path, face or box) or a (path, face) seen before, naming the file and 0-based row.
        """
        seen: set[tuple[str, int]] = set()
        d = self.card.embedding_size
        for file in self.files:
            names = pq.read_schema(file).names
            columns = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in names]
            first = 0
            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_size, columns=columns):
                rows = rows_from_batch(batch, file, first, d)
                for i, key in enumerate(zip(rows.path, rows.face.tolist())):
                    if key in seen:
                        raise EmbeddingShardError(f"'{file}' row {first + i}: path {key[0]!r} face {key[1]} comes a "
                                                  "second time in the folder; each (path, face) must be unique",
                                                  file, first + i)
                    seen.add(key)
                first += len(rows)
                yield rows

    def check_model(self, card: ModelCard) -> None:
        """Raise `IndexMismatchError` unless `card` is the model that made these vectors."""
        if not card.same_model(self.card):
            raise IndexMismatchError(f"the embeddings in '{self.folder}' were made with model {self.card.describe()}; "
                                     f"expected {card.describe()} - embed the photos again with that model "
                                     "(`facesearch embed --model`)")


def open_shards(folder: str | os.PathLike) -> ShardFolder:
    """Open an embedding shard folder: its card, its part files' schemas and row counts (no rows read).

    Raises:
        EmbeddingShardError: missing folder, no card (not a shard folder, or its writing did not
            finish), no part files, an unreadable file, missing columns or wrong column types,
            a fixed vector length other than the card's, an unknown format version.
        ModelSpecError: a damaged model card.
    """
    folder = Path(folder)
    make = f"make one with `facesearch embed PHOTOS_DIR --out {folder}`"
    if not folder.exists():
        raise EmbeddingShardError(f"no embedding folder at '{folder}': the path does not exist - {make}", folder)
    if not folder.is_dir():
        raise EmbeddingShardError(f"'{folder}' is a file, not an embedding folder: pass the folder that holds "
                                  f"{CARD_FILE} and the .parquet files", folder)
    if not (folder / CARD_FILE).is_file():
        raise EmbeddingShardError(f"'{folder}' holds no {CARD_FILE}: it is not an embedding folder, or the run "
                                  f"that wrote it did not finish - {make}", folder)
    card = ModelCard.load(folder)
    files = tuple(sorted(p for p in folder.iterdir()
                         if p.suffix == ".parquet" and not p.name.startswith((".", "_")) and p.is_file()))
    if not files:
        raise EmbeddingShardError(f"'{folder}' holds a {CARD_FILE} but no .parquet files - {make}", folder)
    num_rows = 0
    build: dict | None = None
    for file in files:
        schema, rows = _read_schema(file)
        check_schema(schema, file, card.embedding_size)
        num_rows += rows
        if build is None:
            build = build_of(schema)
    return ShardFolder(folder, card, files, num_rows, build or {})


def read_shards(folder: str | os.PathLike, card: ModelCard | None = None,
                batch_size: int = READ_BATCH_ROWS) -> Iterator[EmbeddingRows]:
    """Open `folder` (checked now, not at the first row) and return its checked rows in batches.

    Args:
        folder: an embedding shard folder.
        card: the model the vectors must come from; None accepts the folder's own.
        batch_size: rows per batch.

    Raises:
        EmbeddingShardError: see `open_shards` and `ShardFolder.batches`.
        IndexMismatchError: `card` is given and the vectors come from another model.
    """
    shards = open_shards(folder)
    if card is not None:
        shards.check_model(card)
    return shards.batches(batch_size)


def load_shards(folder: str | os.PathLike, card: ModelCard | None = None) -> EmbeddingRows:
    """Every row of `folder` in one `EmbeddingRows` (all in memory: for tests and small folders)."""
    shards = open_shards(folder)
    if card is not None:
        shards.check_model(card)
    return EmbeddingRows.concat(list(shards.batches()), shards.card.embedding_size)


def rows_from_batch(batch: pa.RecordBatch | pa.Table, file: str | os.PathLike, first_row: int,
                    dim: int) -> EmbeddingRows:
    """Check one batch of a shard file and convert it; its rows are rows `first_row + i` of `file`.

    Raises:
        EmbeddingShardError: the first bad row (see `ShardFolder.batches`).
    """
    refuse_nulls(batch, REQUIRED_COLUMNS, file, first_row)
    vectors = vectors_of(batch.column("embedding"), dim, file, first_row)
    paths = batch.column("path").to_pylist()
    identities = batch.column("identity").to_pylist()
    faces = batch.column("face").to_numpy(zero_copy_only=False).astype(np.int64)
    check_keys(paths, identities, faces, file, first_row)
    names = batch.schema.names
    boxes: list[Box | None] = [None] * len(paths)
    if "box" in names:
        boxes = [None if b is None else tuple(float(x) for x in b) for b in batch.column("box").to_pylist()]
        check_boxes(boxes, file, first_row)

    def optional(name: str):
        return batch.column(name).to_pylist() if name in names else None

    return EmbeddingRows(paths, identities, faces.astype(np.int32), vectors, boxes, optional("sha256"),
                         optional("size"), optional("mtime_ns"), str(file), first_row)


@dataclass
class QueryVectors:
    """The vectors of one Parquet file to answer (`read_query_vectors`); row `i` is `vectors[i]`."""

    file: Path
    vectors: np.ndarray  # (n, d) float32, rows L2-normalised
    paths: list[str] | None  # the `path` column, if the file has one
    boxes: list[Box | None] | None  # the `box` column, if the file has one
    card: ModelCard | None  # the model_card.json beside the file, if there is one


def read_query_vectors(file: str | os.PathLike, dim: int | None = None) -> QueryVectors:
    """Read and check the `embedding` column of one Parquet file (and `path`, `box` if present).

    Args:
        file: a Parquet file; only the `embedding` column is required. All of it is read.
        dim: the length every vector must have (e.g. the index's); None: the length the model
            card beside the file says, else the first row's.

    Raises:
        EmbeddingShardError: no such file, not Parquet, no `embedding` column, no rows, or a bad
            row (wrong length, null, NaN or infinite, not L2-normalised), naming file and row.
        ModelSpecError: a damaged model_card.json beside the file.
    """
    file = Path(file)
    if not file.is_file():
        what = " (it is a folder: pass one of its .parquet files)" if file.is_dir() else ""
        raise EmbeddingShardError(f"no Parquet file at '{file}'{what}", file)
    schema, _ = _read_schema(file)
    check_schema(schema, file, dim, required=("embedding",))
    columns = [c for c in ("path", "box", "embedding") if c in schema.names]
    table = pq.read_table(file, columns=columns).combine_chunks()
    if table.num_rows == 0:
        raise EmbeddingShardError(f"'{file}' holds no rows: nothing to answer", file)
    card = ModelCard.load(file.parent) if (file.parent / CARD_FILE).is_file() else None
    refuse_nulls(table, ("embedding",), file, 0)
    column = table.column("embedding")
    if dim is None:
        dim = card.embedding_size if card is not None else first_length(column)
    vectors = vectors_of(column, dim, file, 0)
    paths = table.column("path").to_pylist() if "path" in columns else None
    boxes = None
    if "box" in columns:
        boxes = [None if b is None else tuple(float(x) for x in b) for b in table.column("box").to_pylist()]
        check_boxes(boxes, file, 0)
    return QueryVectors(file, vectors, paths, boxes, card)


def _read_schema(file: Path) -> tuple[pa.Schema, int]:
    try:
        meta = pq.read_metadata(file)
    except (OSError, pa.ArrowException) as e:
        raise EmbeddingShardError(f"cannot read '{file}' as Parquet: {e} - is it a .parquet file?", file) from e
    return meta.schema.to_arrow_schema(), meta.num_rows
