"""Building from a folder: identity rule, incremental updates, moves, face policies, progress."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from index_fakes import PixelEmbedder, bump_mtime, make_gallery, write_photo

from facesearch.index import GalleryIndex, build_index, identity_of, rank_identities


def _contents(index_dir: Path) -> dict[str, tuple[str, int]]:
    """path -> (identity, id) of every stored face."""
    with GalleryIndex.open(index_dir) as g:
        ids = g.ids()
        return {r.path: (r.identity, r.id) for r in g.records(ids)}


def _vectors(index_dir: Path) -> dict[str, np.ndarray]:
    with GalleryIndex.open(index_dir) as g:
        ids = g.ids()
        return {r.path: g.vectors([int(r.id)])[0] for r in g.records(ids)}


def _files(index_dir: Path) -> set[str]:
    return {p.name for p in index_dir.iterdir()}


def test_identity_rule():
    assert identity_of("alice/1.jpg") == "alice"
    assert identity_of("alice/2020/trip/1.jpg") == "alice"  # only the first level names the person
    assert identity_of("bob.png") == "bob"
    assert identity_of("Mary Ann.x.JPG") == "Mary Ann.x"


def test_identities_from_folders_and_stems(tmp_path, rng, embedder):
    root = tmp_path / "photos"
    for rel in ["alice/1.png", "alice/2020/2.PNG", "alice/3.jpeg", "bob.png", "carol/1.bmp", "carol/2.GIF",
                "carol/3.tif", "dave/x.webp", ".hidden.png", ".cache/z.png", "alice/.thumb.png"]:
        write_photo(root / rel, rng)
    (root / "notes.txt").write_text("not a photo")
    (root / "dave" / "readme.md").write_text("not a photo either")
    report = build_index(root, tmp_path / "idx", embedder)
    expected = {"alice/1.png": "alice", "alice/2020/2.PNG": "alice", "alice/3.jpeg": "alice", "bob.png": "bob",
                "carol/1.bmp": "carol", "carol/2.GIF": "carol", "carol/3.tif": "carol", "dave/x.webp": "dave"}
    assert {p: ident for p, (ident, _) in _contents(tmp_path / "idx").items()} == expected
    assert (report.total_files, report.added, report.ignored, report.skipped) == (8, 8, 2, [])
    assert (report.vectors, report.photos, report.identities, report.generation) == (8, 8, 4, 1)
    assert sorted(embedder.read) == sorted((root / p).as_posix() for p in expected)
    # ids follow the sorted relative paths: a stable order
    assert [i for _, (_, i) in sorted(_contents(tmp_path / "idx").items())] == list(range(8))


def test_rebuild_without_changes_reads_nothing(tmp_path, gallery, model_dir):
    first = build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir))
    manifest = (tmp_path / "idx" / "manifest.json").read_bytes()
    emb = PixelEmbedder(model_dir)
    report = build_index(gallery, tmp_path / "idx", emb)
    assert (emb.read, emb.embed_calls) == ({}, 0)
    assert (report.unchanged, report.added, report.updated, report.removed) == (9, 0, 0, 0)
    assert not report.written and report.generation == first.generation == 1
    assert (tmp_path / "idx" / "manifest.json").read_bytes() == manifest
    assert report.vectors == 9 and report.identities == 3


def test_modify_add_delete_touch_exactly_those(tmp_path, gallery, model_dir, rng):
    build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir))
    before = _contents(tmp_path / "idx")
    first_segment_mtime = (tmp_path / "idx" / "seg-000000.vectors.npy").stat().st_mtime_ns
    write_photo(gallery / "alice" / "001.png", rng)  # new content
    bump_mtime(gallery / "alice" / "001.png")
    write_photo(gallery / "bob" / "new.png", rng)
    (gallery / "carol" / "002.png").unlink()
    bump_mtime(gallery / "carol" / "000.png")  # touched, same bytes
    emb = PixelEmbedder(model_dir)
    report = build_index(gallery, tmp_path / "idx", emb)

    assert sorted(emb.read) == [(gallery / "alice/001.png").as_posix(), (gallery / "bob/new.png").as_posix()]
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, 7)
    assert (report.total_files, report.vectors, report.generation, report.written) == (9, 9, 2, True)
    after = _contents(tmp_path / "idx")
    assert set(after) == set(before) - {"carol/002.png"} | {"bob/new.png"}
    assert after["alice/001.png"][1] > max(i for _, i in before.values())  # a changed photo gets a new id
    assert all(after[p] == before[p] for p in after if p not in ("alice/001.png", "bob/new.png"))
    vectors = _vectors(tmp_path / "idx")
    ref = emb.reference([gallery / p for p in sorted(vectors)])
    np.testing.assert_array_equal(np.stack([vectors[p] for p in sorted(vectors)]), ref)
    with GalleryIndex.open(tmp_path / "idx") as g:
        touched = g.records([after["carol/000.png"][1]])[0]
        assert touched.mtime_ns == (gallery / "carol/000.png").stat().st_mtime_ns  # stat refreshed
    # The update cost what changed: a new segment with the two new vectors and a tombstone file with
    # the two outgoing ids, beside the first segment, whose files were not rewritten.
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert [(s["number"], s["count"]) for s in m["segments"]] == [(0, 9), (1, 2)]
    assert m["tombstones"] == {"file": "tomb-000002.npy", "count": 2}
    assert (tmp_path / "idx" / "seg-000000.vectors.npy").stat().st_mtime_ns == first_segment_mtime
    # only the current generation's files remain
    assert _files(tmp_path / "idx") - {"meta-000001.sqlite-wal", "meta-000001.sqlite-shm"} == {
        "manifest.json", "model_card.json", ".lock", "meta-000001.sqlite", "seg-000000.vectors.npy",
        "seg-000000.ids.npy", "seg-000001.vectors.npy", "seg-000001.ids.npy", "tomb-000002.npy"}
    again = PixelEmbedder(model_dir)
    assert not build_index(gallery, tmp_path / "idx", again).written and again.read == {}


def test_touch_only_rewrites_metadata_not_vectors(tmp_path, gallery, model_dir):
    build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir))
    bump_mtime(gallery / "bob" / "000.png")
    emb = PixelEmbedder(model_dir)
    report = build_index(gallery, tmp_path / "idx", emb)
    assert (emb.read, report.unchanged, report.written) == ({}, 9, True)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["generation"] == 2 and manifest["metadata"] == "meta-000001.sqlite"
    assert [s["number"] for s in manifest["segments"]] == [0] and manifest["tombstones"]["file"] is None


def test_moved_photo_changes_identity_and_keeps_its_vector(tmp_path, gallery, model_dir):
    build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir))
    old = _vectors(tmp_path / "idx")
    shutil.move(gallery / "alice" / "000.png", gallery / "bob" / "from-alice.png")
    (gallery / "carol").rename(gallery / "caroline")  # fix an identity's name: a folder rename
    emb = PixelEmbedder(model_dir)
    report = build_index(gallery, tmp_path / "idx", emb)
    assert (emb.read, emb.embed_calls) == ({}, 0)  # same bytes elsewhere: vectors are reused
    assert (report.added, report.removed, report.reused, report.unchanged) == (5, 5, 5, 4)
    after = _contents(tmp_path / "idx")
    assert after["bob/from-alice.png"][0] == "bob" and "alice/000.png" not in after
    assert {p: i for p, (i, _) in after.items() if p.startswith("caroline/")} == {
        f"caroline/{n:03d}.png": "caroline" for n in range(4)}
    new = _vectors(tmp_path / "idx")
    np.testing.assert_array_equal(new["bob/from-alice.png"], old["alice/000.png"])
    np.testing.assert_array_equal(new["caroline/003.png"], old["carol/003.png"])
    with GalleryIndex.open(tmp_path / "idx") as g:
        r = rank_identities(g, old["alice/000.png"], k=2)
        assert (r.verdict, r.matches[0].path) == ("bob", "bob/from-alice.png")


def test_batching_and_threads_do_not_change_the_result(tmp_path, model_dir, rng):
    root = tmp_path / "photos"
    make_gallery(root, {"a": 7, "b": 5, "c": 6}, rng)
    emb1, emb2 = PixelEmbedder(model_dir), PixelEmbedder(model_dir)
    build_index(root, tmp_path / "one", emb1, batch_size=1, workers=1)
    build_index(root, tmp_path / "many", emb2, batch_size=4, workers=3)
    assert emb1.embed_calls == 18 and emb2.embed_calls == 5
    assert _contents(tmp_path / "one") == _contents(tmp_path / "many")
    v1, v2 = _vectors(tmp_path / "one"), _vectors(tmp_path / "many")
    for p in v1:
        np.testing.assert_array_equal(v1[p], v2[p])


def test_no_face_and_multi_face_photos(tmp_path, model_dir, rng):
    root = tmp_path / "photos"
    write_photo(root / "ann" / "group.png", rng, size=16)
    write_photo(root / "ann" / "empty.png", rng, size=16)
    write_photo(root / "ann" / "solo.png", rng, size=16)
    boxes = {"group.png": [(0, 0, 4, 4), (2, 2, 14, 14), (8, 8, 12, 12)], "empty.png": []}
    emb = PixelEmbedder(model_dir, boxes=boxes)
    report = build_index(root, tmp_path / "idx", emb)
    assert (report.added, report.no_face, report.multi_face, report.vectors, report.photos) == (3, 1, 1, 2, 3)
    with GalleryIndex.open(tmp_path / "idx") as g:
        recs = {r.path: r for r in g.records(g.ids())}
        assert set(recs) == {"ann/group.png", "ann/solo.png"}
        assert (recs["ann/group.png"].box, recs["ann/group.png"].face) == ((2.0, 2.0, 14.0, 14.0), 1)  # largest
        largest = emb.faces(root / "ann" / "group.png")[1].image
        np.testing.assert_array_equal(g.vectors([recs["ann/group.png"].id])[0], emb.embed([largest])[0])

    again = PixelEmbedder(model_dir, boxes=boxes)
    assert not build_index(root, tmp_path / "idx", again).written and again.read == {}  # no-face photo remembered

    every = build_index(root, tmp_path / "idx", PixelEmbedder(model_dir, boxes=boxes), faces="all")
    assert every.rebuilt and (every.vectors, every.multi_face, every.no_face) == (4, 1, 1)
    with GalleryIndex.open(tmp_path / "idx") as g:
        recs = g.records(g.ids())
        assert sorted((r.path, r.face, r.box) for r in recs if r.path == "ann/group.png") == [
            ("ann/group.png", i, tuple(map(float, b))) for i, b in enumerate(boxes["group.png"])]
        assert g.manifest.next_id == 6 and min(r.id for r in recs) == 2  # ids are never reused


def test_a_new_crop_method_embeds_every_photo_again(tmp_path, gallery, model_dir):
    build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir, crop_method="old-alignment"))
    same = PixelEmbedder(model_dir, crop_method="old-alignment")
    assert not build_index(gallery, tmp_path / "idx", same).written and same.embedded == 0

    changed = PixelEmbedder(model_dir, crop_method="new-alignment")
    report = build_index(gallery, tmp_path / "idx", changed)
    assert report.rebuilt and changed.embedded == 9 and report.vectors == 9
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["build"]["crops"] == "new-alignment"

    # An index from before the crop method was recorded cannot vouch for its vectors either.
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del manifest["build"]["crops"]
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    again = PixelEmbedder(model_dir, crop_method="new-alignment")
    assert build_index(gallery, tmp_path / "idx", again).rebuilt and again.embedded == 9


def test_progress_has_known_totals(tmp_path, gallery, model_dir):
    calls = []
    build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir), batch_size=4,
                progress=lambda phase, done, total: calls.append((phase, done, total)))
    assert calls == [("embed", 0, 9), ("embed", 4, 9), ("embed", 8, 9), ("embed", 9, 9)]
    calls.clear()
    bump_mtime(gallery / "alice" / "000.png")
    write_photo(gallery / "alice" / "new.png", np.random.default_rng(5))
    build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir),
                progress=lambda phase, done, total: calls.append((phase, done, total)))
    assert calls == [("hash", 0, 1), ("hash", 1, 1), ("embed", 0, 1), ("embed", 1, 1)]


def test_report_is_json_and_adds_up(tmp_path, gallery, embedder):
    (gallery / "bob" / "broken.png").write_bytes(b"")
    report = build_index(gallery, tmp_path / "idx", embedder)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["skipped"] == [{"path": "bob/broken.png", "reason": d["skipped"][0]["reason"]}]
    assert d["total_files"] == d["added"] + d["updated"] + d["unchanged"] + len(d["skipped"]) == 10
    assert set(d["seconds"]) == {"scan", "embed", "save"} and all(v >= 0 for v in d["seconds"].values())
    assert d["images_per_second"] > 0
    assert d["source_dir"] == str(gallery.resolve()) and d["index_dir"] == str((tmp_path / "idx").resolve())


def test_manifest_records_model_and_settings(tmp_path, gallery, embedder, model_dir):
    build_index(gallery, tmp_path / "idx", embedder)
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["generation"] == 1 and m["metric"] == "inner_product"
    assert m["model_dir"] == str(model_dir.resolve()) and m["source_dir"] == str(gallery.resolve())
    assert m["model_card"] == embedder.card.to_dict() and m["dim"] == 16
    assert m["counts"] == {"faces": 9, "stored": 9, "photos": 9, "identities": 3} and m["next_id"] == 9
    assert m["build"] == {"faces": "largest", "crops": "fake-resize"}
    assert m["index"] == {"index_type": "auto", "memory_budget": None, "vector_dtype": "float32", "target_recall": 0.99}
    assert [(s["kind"], s["count"], s["dtype"]) for s in m["segments"]] == [("flat", 9, "float32")]
    assert json.loads((tmp_path / "idx" / "model_card.json").read_text()) == embedder.card.to_dict()
    with GalleryIndex.open(tmp_path / "idx") as g:
        assert (g.model_dir, g.source_dir, g.card) == (model_dir.resolve(), gallery.resolve(), embedder.card)


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_arguments(tmp_path, gallery, embedder, bad):
    with pytest.raises(ValueError, match="batch_size"):
        build_index(gallery, tmp_path / "idx", embedder, batch_size=bad)
    with pytest.raises(ValueError, match="faces must be one of"):
        build_index(gallery, tmp_path / "idx", embedder, faces="biggest")
