"""Embedding shard folders: the Parquet hand-off format for face vectors, written and read with checks.

A folder holds `model_card.json` (the model that made the vectors) and one or more `*.parquet`
files with one row per face:

    path       string                         photo path relative to the gallery root, '/'-separated
    identity   string
    face       int32                          0 for a photo's first (or its only kept, largest) face
    embedding  fixed_size_list<float32>[d]    d = the card's embedding_size; rows L2-normalised
    box        fixed_size_list<float32>[4]    nullable: x1, y1, x2, y2 in photo pixels (null: aligned crop)
    sha256 string, size int64, mtime_ns int64 optional: the photo file's digest, size and mtime

The Parquet schema metadata carries `facesearch.embeddings.format_version` (FORMAT_VERSION) and
`facesearch.embeddings.build` (JSON: face policy and crop method). Part files are read in name
order; names starting with `.` or `_` are not shards; other columns are ignored. `ShardWriter`
takes rows sorted by (path, face), so a folder made by facesearch reads back in that order,
whatever the engine that made it.

Crash safety: each part file is written under a hidden temporary name, fsynced and renamed when
complete; `model_card.json` is written last and is the folder's commit mark. A crash leaves no
card, and `open_shards` refuses such a folder ("did not finish"); an overwrite removes the old
card first, so a folder is never read as a mixture of two runs. Whoever writes shards by other
means should likewise write the card last.

    with ShardWriter(folder, card, build={"faces": "largest"}) as w:   # card written on clean exit
        w.write(EmbeddingRows(...))                                     # sorted by (path, face)
    shards = open_shards(folder)           # card, files, num_rows, build: checked, nothing read
    for rows in shards.batches():          # EmbeddingRows, every row checked, file + row in errors
        ...
    q = read_query_vectors("x.parquet", dim=128)    # only `embedding` needed
"""

from facesearch.embedder.embedding_shards.format import (
    FORMAT_VERSION,
    NORM_TOLERANCE,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    EmbeddingRows,
    check_vectors,
    shard_schema,
)
from facesearch.embedder.embedding_shards.reader import (
    QueryVectors,
    ShardFolder,
    load_shards,
    open_shards,
    read_query_vectors,
    read_shards,
)
from facesearch.embedder.embedding_shards.writer import DEFAULT_ROWS_PER_FILE, ShardWriter

__all__ = [
    "DEFAULT_ROWS_PER_FILE", "FORMAT_VERSION", "NORM_TOLERANCE", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS",
    "EmbeddingRows", "QueryVectors", "ShardFolder", "ShardWriter", "check_vectors", "load_shards", "open_shards",
    "read_query_vectors", "read_shards", "shard_schema",
]
