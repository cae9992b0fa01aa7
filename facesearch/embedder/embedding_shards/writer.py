"""`ShardWriter`: rows in, bounded Parquet part files out, each renamed into place whole; the card last."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from facesearch.embedder.core.atomic import fsync_dir
from facesearch.embedder.core.errors import EmbeddingShardError
from facesearch.embedder.core.model_card import CARD_FILE, ModelCard
from facesearch.embedder.embedding_shards.format import (
    EmbeddingRows,
    check_boxes,
    check_keys,
    check_vectors,
    shard_schema,
)

DEFAULT_ROWS_PER_FILE = 50_000  # 128-d: ~26 MB of vectors per file; 512-d: ~100 MB
ROW_GROUP_ROWS = 8192  # rows buffered before a Parquet row group is written: bounds the memory held


@dataclass
class _Part:
    """A part file being written under its temporary name."""

    final: Path
    temp: Path
    writer: pq.ParquetWriter
    rows: int = 0


class ShardWriter:
    """Streams rows into `part-NNNNN.parquet` files of at most `rows_per_file` rows; the card goes last.

    Use as a context manager: a clean exit commits the folder (`close`), an exception abandons it
    (`abort`: what this writer wrote is removed; the folder holds no card, so no reader takes it).
    Rows must come sorted by (path, face), without repeats, across all `write` calls.

    Args:
        folder: the shard folder; created if missing. It must be empty, or an embedding shard
            folder and `overwrite` set (then its card is removed first, its part files next).
        card: the model that made the vectors (its `embedding_size` is the row length).
        rows_per_file: rows per part file.
        build: how the vectors were made (face policy, crop method), kept in the schema metadata.
        overwrite: replace the shards of an existing shard folder.

    Raises:
        EmbeddingShardError: `folder` is a file, or not empty and not replaceable.
    """

    def __init__(self, folder: str | os.PathLike, card: ModelCard, *, rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                 build: dict | None = None, overwrite: bool = False):
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
        self.folder = Path(folder)
        self.card = card
        self.schema = shard_schema(card.embedding_size, build)
        self.rows_per_file = rows_per_file
        self.files: list[Path] = []
        self.rows = 0  # rows accepted so far (written or buffered)
        self._row_group = min(rows_per_file, ROW_GROUP_ROWS)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._part: _Part | None = None
        self._last: tuple[str, int] | None = None
        self._done = False
        prepare_folder(self.folder, overwrite)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, rows: EmbeddingRows) -> None:
        """Append `rows`, checked as a reader checks them, and sorted after what came before.

        Raises:
            EmbeddingShardError: a row a reader would refuse (length, non-finite, not normalised, bad path).
            ValueError: rows out of (path, face) order or repeated, or the writer is closed.
        """
        if self._done:
            raise ValueError("this ShardWriter is closed")
        if not len(rows):
            return
        d = self.card.embedding_size
        if rows.embedding.ndim != 2 or rows.embedding.shape != (len(rows), d):
            raise EmbeddingShardError(f"the rows given to ShardWriter.write have embeddings of shape "
                                      f"{rows.embedding.shape}, expected ({len(rows)}, {d}) for model "
                                      f"{self.card.describe()}")
        check_keys(rows.path, rows.identity, rows.face)
        check_vectors(rows.embedding)
        check_boxes(rows.box)
        self._check_order(rows)
        self._pending.append(rows.to_table(self.schema))
        self._pending_rows += len(rows)
        self.rows += len(rows)
        while self._pending_rows >= self._row_group:
            self._flush(self._row_group)

    def close(self) -> list[Path]:
        """Write what is buffered, finish the last part file, then write `model_card.json` (the commit).

        A writer given no rows writes one empty part file, so the folder still reads (as no rows).

        Returns:
            The part files, in order.
        """
        if self._done:
            return self.files
        try:
            while self._pending_rows:
                self._flush(self._pending_rows)
            if self._part is None and not self.files:
                self._open_part()
            if self._part is not None:
                self._finish_part()
        except BaseException:
            self.abort()
            raise
        self.card.save(self.folder)  # last: a folder with a card is complete
        self._done = True
        return self.files

    def abort(self) -> None:
        """Stop without committing: remove this writer's temporary and finished part files."""
        if self._done:
            return
        self._done = True
        if self._part is not None:
            with contextlib.suppress(Exception):
                self._part.writer.close()
            self._part.temp.unlink(missing_ok=True)
            self._part = None
        for path in self.files:
            path.unlink(missing_ok=True)

    def _check_order(self, rows: EmbeddingRows) -> None:
        last = self._last
        for i, key in enumerate(zip(rows.path, rows.face.tolist())):
            if last is not None and key <= last:
                raise ValueError(f"rows must come sorted by (path, face) without repeats: row {i} {key} comes "
                                 f"after {last}")
            last = key
        self._last = last

    def _flush(self, limit: int) -> None:
        if self._part is None:
            self._open_part()
        n = min(limit, self._pending_rows, self.rows_per_file - self._part.rows)
        table = pa.concat_tables(self._pending)
        rest = table.slice(n)
        self._pending = [rest] if len(rest) else []
        self._pending_rows -= n
        self._part.writer.write_table(table.slice(0, n), row_group_size=n)
        self._part.rows += n
        if self._part.rows == self.rows_per_file:
            self._finish_part()

    def _open_part(self) -> None:
        final = self.folder / f"part-{len(self.files):05d}.parquet"
        temp = self.folder / f".{final.name}.{os.getpid()}.tmp"  # hidden: never read as a shard
        self._part = _Part(final, temp, pq.ParquetWriter(temp, self.schema))

    def _finish_part(self) -> None:
        part, self._part = self._part, None
        part.writer.close()
        with open(part.temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part.temp, part.final)
        fsync_dir(self.folder)
        self.files.append(part.final)


def prepare_folder(folder: Path, overwrite: bool) -> None:
    """Make `folder` ready for a new set of shards: created, or emptied of a previous set if allowed.

    Raises:
        EmbeddingShardError: `folder` is a file; not empty without `overwrite`; or it holds
            anything but a card, part files and leftover temporary files.
    """
    if folder.exists() and not folder.is_dir():
        raise EmbeddingShardError(f"'{folder}' is a file: pass a folder (new or empty) for the embeddings")
    folder.mkdir(parents=True, exist_ok=True)
    entries = sorted(folder.iterdir())
    if not entries:
        return
    ours = [p for p in entries if p.is_file() and (p.name == CARD_FILE or p.suffix == ".parquet"
                                                   or (p.name.startswith(".part-") and p.suffix == ".tmp"))]
    foreign = [p.name for p in entries if p not in ours]
    if not overwrite:
        raise EmbeddingShardError(f"'{folder}' is not empty: choose a new folder, or pass --overwrite to replace "
                                  "the embeddings in it")
    if foreign:
        raise EmbeddingShardError(f"'{folder}' holds files that are not embedding shards ({', '.join(foreign[:3])}): "
                                  "--overwrite only replaces an embedding folder; choose a new folder")
    (folder / CARD_FILE).unlink(missing_ok=True)  # uncommit first: a crash below leaves no readable mixture
    fsync_dir(folder)
    for p in ours:
        p.unlink(missing_ok=True)
