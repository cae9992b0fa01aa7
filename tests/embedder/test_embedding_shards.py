"""Embedding shard folders: what is written reads back exactly, and every bad input is refused by file and row."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facesearch.embedder.core.errors import EmbeddingShardError, IndexMismatchError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.embedder.embedding_shards import (
    FORMAT_VERSION,
    EmbeddingRows,
    ShardWriter,
    load_shards,
    open_shards,
    read_query_vectors,
    read_shards,
)

D = 8
CARD = ModelCard("tiny-test", 112, 96, D, "sphereface-112x96", onnx_sha256="a" * 64)
OTHER = ModelCard("other-test", 112, 96, D, "sphereface-112x96", onnx_sha256="b" * 64)


def unit_rows(n: int, seed: int = 0, d: int = D) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_rows(n: int, start: int = 0, seed: int = 0) -> EmbeddingRows:
    """Photo i has faces 0 and 1 when i is even, face 0 only when odd; boxes on even faces."""
    paths, faces = [], []
    for i in range(start, start + n):
        for f in range(2 if i % 2 == 0 else 1):
            paths.append(f"id_{i // 4:02d}/{i:04d}.jpg")
            faces.append(f)
    m = len(paths)
    return EmbeddingRows(paths, [p.split("/")[0] for p in paths], np.array(faces, np.int32), unit_rows(m, seed),
                         [(1.0, 2.0, 30.0, 40.0) if f == 0 else None for f in faces], [f"{i:064x}" for i in range(m)],
                         list(range(100, 100 + m)), list(range(10**18, 10**18 + m)))


def write(folder, rows: EmbeddingRows, **kw):
    with ShardWriter(folder, CARD, **kw) as w:
        w.write(rows)
    return w


def test_round_trip_keeps_every_column_and_the_order(tmp_path):
    pieces = [make_rows(5), make_rows(10, start=5, seed=1), make_rows(5, start=15, seed=2)]
    rows = EmbeddingRows.concat(pieces, D)
    w = ShardWriter(tmp_path / "s", CARD, rows_per_file=7, build={"faces": "all", "crops": "x"})
    with w:  # in three pieces, so that rows cross file boundaries
        for piece in pieces:
            w.write(piece)

    assert [p.name for p in w.files] == [f"part-{i:05d}.parquet" for i in range(5)]  # 30 rows, 7 per file
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["model_card.json"] + [p.name for p in w.files]
    shards = open_shards(tmp_path / "s")
    assert shards.card == CARD and shards.num_rows == len(rows) == 30 and shards.build == {"faces": "all", "crops": "x"}
    back = load_shards(tmp_path / "s")
    assert back.path == rows.path and back.identity == rows.identity and back.box == rows.box
    np.testing.assert_array_equal(back.face, rows.face)
    np.testing.assert_array_equal(back.embedding, rows.embedding)
    assert (back.sha256, back.size, back.mtime_ns) == (rows.sha256, rows.size, rows.mtime_ns)
    assert back.path == sorted(back.path)
    schema = pq.read_schema(w.files[0])
    assert schema.metadata[b"facesearch.embeddings.format_version"] == str(FORMAT_VERSION).encode()
    assert schema.field("embedding").type == pa.list_(pa.float32(), D)
    assert schema.field("box").type == pa.list_(pa.float32(), 4) and schema.field("box").nullable
    # Batches name where they came from, for the caller's own messages.
    batches = list(read_shards(tmp_path / "s", CARD, batch_size=4))
    assert [(b.file.rsplit("/", 1)[1], b.first_row, len(b)) for b in batches[:3]] == [
        ("part-00000.parquet", 0, 4), ("part-00000.parquet", 4, 3), ("part-00001.parquet", 0, 4)]


def test_a_file_written_by_other_tools_is_read(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    v = unit_rows(3).astype(np.float64)
    table = pa.table({"path": ["b.jpg", "a/x.png", "a/y.png"], "identity": ["b", "a", "a"], "face": [0, 0, 0],
                      "embedding": [list(r) for r in v], "extra": [1, 2, 3]})  # list<double>, int64, no box
    pq.write_table(table, folder / "vectors.parquet")
    CARD.save(folder)
    back = load_shards(folder)
    assert back.path == ["b.jpg", "a/x.png", "a/y.png"]  # file order: nothing is re-sorted
    assert back.box == [None] * 3 and back.sha256 is None and back.embedding.dtype == np.float32
    np.testing.assert_allclose(back.embedding, v, rtol=1e-6)


def test_the_card_is_the_commit_mark(tmp_path):
    folder = tmp_path / "s"
    with pytest.raises(RuntimeError, match="crash"), ShardWriter(folder, CARD, rows_per_file=4) as w:
        w.write(make_rows(6))  # 9 rows: two part files are complete, a third is open
        assert len(w.files) == 2 and not (folder / "model_card.json").exists()
        raise RuntimeError("crash")
    assert list(folder.iterdir()) == []  # an abandoned run leaves nothing behind
    (folder / "part-00000.parquet").write_bytes(b"left over by a killed run")  # killed: no cleanup at all
    with pytest.raises(EmbeddingShardError, match="holds no model_card.json.*did not finish"):
        open_shards(folder)


def test_an_existing_folder_is_replaced_only_on_request(tmp_path):
    folder = tmp_path / "s"
    write(folder, make_rows(10), rows_per_file=3)
    with pytest.raises(EmbeddingShardError, match="not empty.*--overwrite"):
        ShardWriter(folder, CARD)
    write(folder, make_rows(2, start=50), overwrite=True)
    assert [p.name for p in sorted(folder.iterdir())] == ["model_card.json", "part-00000.parquet"]
    assert load_shards(folder).path == make_rows(2, start=50).path
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddingShardError, match="not embedding shards \\(notes.txt\\)"):
        ShardWriter(folder, CARD, overwrite=True)
    with pytest.raises(EmbeddingShardError, match="is a file"):
        ShardWriter(folder / "notes.txt", CARD)


def test_writer_refuses_rows_out_of_order_or_bad(tmp_path):
    w = ShardWriter(tmp_path / "s", CARD)
    w.write(make_rows(4, start=10))
    with pytest.raises(ValueError, match="sorted by \\(path, face\\)"):
        w.write(make_rows(1, start=2))
    bad = make_rows(2)
    bad.embedding[1] *= 2
    with pytest.raises(EmbeddingShardError, match="row 1: the embedding's L2 norm is 2"):
        w.write(bad)
    w.abort()
    with ShardWriter(tmp_path / "empty", CARD):
        pass
    assert open_shards(tmp_path / "empty").num_rows == 0  # no rows: still a valid, empty folder


def _folder_with(tmp_path, table: pa.Table, name="part-00000.parquet", card=CARD):
    folder = tmp_path / "bad"
    folder.mkdir(exist_ok=True)
    pq.write_table(table, folder / name)
    card.save(folder)
    return folder


def _table(vectors, paths=None, **columns) -> pa.Table:
    n = len(vectors)
    paths = paths or [f"p/{i:03d}.jpg" for i in range(n)]
    return pa.table({"path": paths, "identity": ["p"] * n, "face": pa.array([0] * n, pa.int32()),
                     "embedding": pa.array([None if v is None else list(map(float, v)) for v in vectors],
                                           pa.list_(pa.float32()))} | columns)


def _refused(folder, *, match, row=None, error=EmbeddingShardError):
    with pytest.raises(error, match=match) as info:
        list(read_shards(folder))
    if row is not None:
        assert info.value.row == row and info.value.file.endswith(".parquet"), (info.value.file, info.value.row)
    return info.value


def test_every_bad_row_is_refused_with_its_file_and_row(tmp_path):
    good = unit_rows(6)
    short = list(good[:3]) + [good[3][:5]] + list(good[4:])
    e = _refused(_folder_with(tmp_path, _table(short)), match="part-00000.parquet' row 3: the embedding has 5 values, "
                 "expected 8", row=3)
    assert str(tmp_path) in str(e)
    nan = good.copy()
    nan[4, 2] = np.nan
    _refused(_folder_with(tmp_path, _table(nan)), match="row 4: the embedding holds NaN or infinite", row=4)
    inf = good.copy()
    inf[1, 0] = np.inf
    _refused(_folder_with(tmp_path, _table(inf)), match="row 1: the embedding holds NaN", row=1)
    loose = good.copy()
    loose[5] *= 1.01
    _refused(_folder_with(tmp_path, _table(loose)), match="row 5: the embedding's L2 norm is 1.01, expected 1", row=5)
    _refused(_folder_with(tmp_path, _table(list(good[:2]) + [None])), match="row 2: 'embedding' is null", row=2)
    _refused(_folder_with(tmp_path, _table(good[:2], paths=["ok.jpg", "/etc/x.jpg"])), match="row 1: path '/etc/x.jpg'",
             row=1)
    _refused(_folder_with(tmp_path, _table(good[:2], paths=["a.jpg", "a.jpg"])), match="row 1: path 'a.jpg' face 0 "
             "comes a second time", row=1)
    _refused(_folder_with(tmp_path, _table(good[:2], box=pa.array([[1, 2, 3, float("nan")], None],
                                                                  pa.list_(pa.float32())))),
             match="row 0: box", row=0)


def test_a_fixed_length_of_the_wrong_size_is_refused_before_reading(tmp_path):
    v = unit_rows(3, d=16)
    table = pa.table({"path": ["a", "b", "c"], "identity": ["a", "b", "c"], "face": pa.array([0, 0, 0], pa.int32()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), 16)})
    with pytest.raises(EmbeddingShardError, match="part-00000.parquet' row 0: the embedding has 16 values \\(in every "
                       "row of this file\\), expected 8"):
        open_shards(_folder_with(tmp_path, table))


def test_folders_and_files_that_are_not_shards_are_refused(tmp_path):
    with pytest.raises(EmbeddingShardError, match="does not exist.*facesearch embed"):
        open_shards(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmbeddingShardError, match="holds no model_card.json: it is not an embedding folder"):
        open_shards(tmp_path / "empty")
    CARD.save(tmp_path / "empty")
    with pytest.raises(EmbeddingShardError, match="no .parquet files"):
        open_shards(tmp_path / "empty")
    missing = _table(unit_rows(2)).drop_columns(["identity"])
    with pytest.raises(EmbeddingShardError, match="has no column\\(s\\) 'identity'.*an embedding shard needs"):
        open_shards(_folder_with(tmp_path, missing))
    (tmp_path / "bad" / "part-00000.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(EmbeddingShardError, match="cannot read .*part-00000.parquet' as Parquet"):
        open_shards(tmp_path / "bad")
    wrong_type = _table(unit_rows(2)).set_column(2, "face", pa.array(["0", "1"]))
    with pytest.raises(EmbeddingShardError, match="column 'face' is string, expected int32"):
        open_shards(_folder_with(tmp_path, wrong_type))
    future = _table(unit_rows(2)).replace_schema_metadata({b"facesearch.embeddings.format_version": b"99"})
    with pytest.raises(EmbeddingShardError, match="format version 99; this facesearch reads version 1"):
        open_shards(_folder_with(tmp_path, future))


def test_vectors_of_another_model_are_refused(tmp_path):
    write(tmp_path / "s", make_rows(3))
    with pytest.raises(IndexMismatchError, match="made with model 'tiny-test' \\(8-d\\); expected 'other-test'"):
        read_shards(tmp_path / "s", OTHER)  # refused when opened, before any row is asked for
    assert len(load_shards(tmp_path / "s", CARD)) == 5


def test_query_vectors_need_only_an_embedding_column(tmp_path):
    v = unit_rows(4)
    pq.write_table(pa.table({"embedding": [list(map(float, r)) for r in v]}), tmp_path / "q.parquet")
    q = read_query_vectors(tmp_path / "q.parquet")
    np.testing.assert_array_equal(q.vectors, v)
    assert q.paths is None and q.boxes is None and q.card is None

    write(tmp_path / "s", make_rows(2))  # a shard file: paths, boxes and the card beside it come along
    q = read_query_vectors(tmp_path / "s" / "part-00000.parquet")
    assert q.paths == make_rows(2).path and q.boxes == make_rows(2).box and q.card == CARD

    bad = v.copy()
    bad[2] *= 0.5
    pq.write_table(pa.table({"embedding": [list(map(float, r)) for r in bad]}), tmp_path / "bad.parquet")
    with pytest.raises(EmbeddingShardError, match="bad.parquet' row 2: the embedding's L2 norm is 0.5") as e:
        read_query_vectors(tmp_path / "bad.parquet")
    assert e.value.row == 2
    with pytest.raises(EmbeddingShardError, match="q.parquet' row 0: the embedding has 8 values, expected 16"):
        read_query_vectors(tmp_path / "q.parquet", dim=16)
    pq.write_table(pa.table({"vector": [[1.0]]}), tmp_path / "other.parquet")
    with pytest.raises(EmbeddingShardError, match="has no column\\(s\\) 'embedding'"):
        read_query_vectors(tmp_path / "other.parquet")
    (tmp_path / "notes.json").write_text(json.dumps({}))
    with pytest.raises(EmbeddingShardError, match="as Parquet"):
        read_query_vectors(tmp_path / "notes.json")
    with pytest.raises(EmbeddingShardError, match="it is a folder"):
        read_query_vectors(tmp_path / "s")
