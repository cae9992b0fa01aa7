"""`build-index --from-embeddings`: the Parquet round trip gives the answers the photos give, and updates mirror."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from clitools import ENROLLED, invoke, invoke_json


@pytest.fixture(scope="module")
def shards(faces, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "gallery.shards"
    invoke_json("embed", faces / "gallery", "--out", out, "--model", model_dir, "--aligned")
    return out


def _answers(index, probes: list) -> list:
    out = []
    for probe in probes:
        (face,) = invoke_json("query", "--aligned", probe, "--index", index, "-k", "3")["faces"]
        out.append([(m["identity"], m["path"], round(m["score"], 5)) for m in face["matches"]])
    return out


def test_round_trip_gives_the_answers_of_the_photos(faces, model_dir, shards, tmp_path):
    from_photos = tmp_path / "photos.idx"
    invoke_json("build-index", faces / "gallery", "--aligned", "--model", model_dir, "--index", from_photos)
    report = invoke_json("build-index", "--from-embeddings", shards, "--index", tmp_path / "vectors.idx",
                         "--model", model_dir)

    assert (report["added"], report["vectors"], report["identities"]) == (3 * ENROLLED, 3 * ENROLLED, ENROLLED)
    probes = sorted((faces / "probes").glob("*/*.png"))[::4]
    assert _answers(tmp_path / "vectors.idx", probes) == _answers(from_photos, probes)


def test_updates_mirror_the_shards_and_keep_unchanged_segments(shards, tmp_path):
    index = tmp_path / "idx"
    invoke_json("build-index", "--from-embeddings", shards, "--index", index)
    first = json.loads((index / "manifest.json").read_text())["segments"]
    again = invoke_json("build-index", "--from-embeddings", shards, "--index", index)
    assert (again["unchanged"], again["written"]) == (3 * ENROLLED, False)

    # Drop one photo's rows and change another's identity: one removal, one metadata-only change.
    edited = tmp_path / "edited.shards"
    shutil.copytree(shards, edited)
    part = sorted(edited.glob("*.parquet"))[0]
    table = pq.read_table(part)
    paths = table.column("path").to_pylist()
    keep = np.array([p != paths[0] for p in paths])
    table = table.filter(keep)
    identities = table.column("identity").to_pylist()
    identities[0] = "renamed"
    table = table.set_column(table.schema.get_field_index("identity"), "identity",
                             __import__("pyarrow").array(identities))
    pq.write_table(table, part)

    report = invoke_json("build-index", "--from-embeddings", edited, "--index", index)
    assert (report["removed"], report["unchanged"], report["added"]) == (1, 3 * ENROLLED - 1, 0)
    m = json.loads((index / "manifest.json").read_text())
    assert [s["number"] for s in m["segments"]] == [s["number"] for s in first]  # no segment rewritten
    assert m["tombstones"]["count"] == 1
    with __import__("facesearch.index", fromlist=["GalleryIndex"]).GalleryIndex.open(index) as g:
        assert "renamed" in {name for name, _, _ in g.store.identities()}


def test_refusals(shards, other_model_dir, faces, tmp_path):
    bad = tmp_path / "bad.shards"
    shutil.copytree(shards, bad)
    part = sorted(bad.glob("*.parquet"))[0]
    table = pq.read_table(part)
    vectors = np.array(table.column("embedding").to_pylist(), np.float32)
    vectors[2] *= 2  # not L2-normalised
    import pyarrow as pa

    table = table.set_column(table.schema.get_field_index("embedding"), "embedding",
                             pa.array(vectors.tolist(), type=table.schema.field("embedding").type))
    pq.write_table(table, part)
    r = invoke("build-index", "--from-embeddings", bad, "--index", tmp_path / "idx")
    assert r.exit_code == 1 and part.name in r.stderr and "row 2" in r.stderr
    assert not (tmp_path / "idx" / "manifest.json").exists()

    other = tmp_path / "other.idx"
    invoke_json("build-index", faces / "gallery", "--aligned", "--model", other_model_dir, "--index", other)
    r = invoke("build-index", "--from-embeddings", shards, "--index", other)
    assert r.exit_code == 1 and "index was built with model" in r.stderr
    r = invoke("build-index", faces / "gallery", "--from-embeddings", shards, "--index", tmp_path / "x")
    assert r.exit_code != 0 and "not both" in r.output


def _index_contents(index) -> tuple:
    """Every stored face as (path, identity, face, vector rounded), sorted: what an index holds, however built."""
    from facesearch.index import GalleryIndex

    with GalleryIndex.open(index) as g:
        photos = g.store.photos(None)
        faces = g.store.faces_of(sorted(photos))
        rows = [(path, photos[path].identity, f.face, tuple(np.round(g.vectors([f.id])[0], 5)))
                for path in sorted(faces) for f in faces[path]]
    return tuple(sorted(rows))


COUNTS = ("total_files", "added", "updated", "removed", "unchanged", "vectors", "photos", "identities")


def test_only_changed_shard_files_are_read_and_the_index_is_the_full_scans(shards, tmp_path):
    """Each step twice: with the record of the last ingest (files decided by size, mtime and rows), and on a copy
    of the index without it (every row read, the behaviour before): the same counts, the same faces."""
    import pyarrow as pa

    folder = tmp_path / "live.shards"
    shutil.copytree(shards, folder)
    index = tmp_path / "idx"
    first = invoke_json("build-index", "--from-embeddings", folder, "--index", index)
    assert first["shard_files_read"] == len(list(folder.glob("*.parquet"))) and (index / "shard_files.json").is_file()

    def both() -> tuple[dict, dict]:
        reference = tmp_path / f"ref{len(list(tmp_path.iterdir()))}"
        shutil.copytree(index, reference, ignore=shutil.ignore_patterns(".lock", "shard_files.json"))
        fast = invoke_json("build-index", "--from-embeddings", folder, "--index", index)
        full = invoke_json("build-index", "--from-embeddings", folder, "--index", reference)
        assert {k: fast[k] for k in COUNTS} == {k: full[k] for k in COUNTS}
        assert _index_contents(index) == _index_contents(reference)
        return fast, full

    # Nothing changed: no file is read row by row.
    fast, full = both()
    assert fast["shard_files_read"] == 0 and fast["unchanged"] == 3 * ENROLLED and not fast["written"]

    # A new part file (another tool's, or a second embedding run) with 5 new photos: only it is read.
    part = sorted(folder.glob("*.parquet"))[0]
    table = pq.read_table(part).slice(0, 5)
    table = table.set_column(0, "path", pa.array([f"extra/{p}" for p in table.column("path").to_pylist()]))
    table = table.set_column(table.schema.get_field_index("identity"), "identity", pa.array(["newcomer"] * 5))
    pq.write_table(table, folder / "zz-extra.parquet")
    fast, full = both()
    assert (fast["shard_files_read"], fast["added"], fast["unchanged"]) == (1, 5, 3 * ENROLLED)
    assert full["shard_files_read"] == len(list(folder.glob("*.parquet")))

    # A file rewritten with the same rows (a new mtime) is read again, and found unchanged.
    (folder / "zz-extra.parquet").touch()
    fast, _ = both()
    assert (fast["shard_files_read"], fast["added"], fast["unchanged"]) == (1, 0, 3 * ENROLLED + 5)

    # A photo removed from the index by other means: its file is read again, and the photo comes back.
    assert invoke("remove", "newcomer", "--index", index).exit_code == 0
    fast, _ = both()
    assert (fast["shard_files_read"], fast["added"]) == (1, 5)

    # A file deleted from the folder: its photos leave the index, and no file is read.
    (folder / "zz-extra.parquet").unlink()
    fast, _ = both()
    assert (fast["shard_files_read"], fast["removed"], fast["vectors"]) == (0, 5, 3 * ENROLLED)
