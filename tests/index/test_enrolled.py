"""What the service changes survives folder builds (facesearch.index.sync.enrolled): exclusions and enrolled photos.

The service's writes are done here as the service does them (`facesearch.service.writes`), with the
writer API directly, so that every folder-build rule is checked without an HTTP server.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from index_fakes import PixelEmbedder, bump_mtime, write_photo

from facesearch.embedder.core.errors import DatasetError
from facesearch.index import GalleryIndex, build_index, open_writer
from facesearch.index.storage.photostore import PhotoStore, enrolled_path, sha256_bytes
from facesearch.index.storage.store import Photo
from facesearch.index.sync.enrolled import exclusion_of, find_face, plan_exclusions


def remove_identity_as_the_service_does(index_dir, embedder, identity: str) -> list[str]:
    with open_writer(index_dir, card=embedder.card, model_dir=embedder.model_dir) as w:
        photos = w.photos_of_identity(identity)
        w.remove_photos([p.path for p in photos])
        w.exclude([exclusion_of(p) for p in photos if p.source == "folder"])
        w.commit()
    return [p.path for p in photos]


def enrol_as_the_service_does(index_dir, embedder, identity: str, photo_file, keep: bool = True) -> int:
    data = photo_file.read_bytes()
    store = PhotoStore(index_dir)
    sha = store.put(data, ".png") if keep else sha256_bytes(data)
    crop = embedder.faces(photo_file)[0]
    with open_writer(index_dir, card=embedder.card, model_dir=embedder.model_dir) as w:
        (face_id,) = w.add_photo(Photo(enrolled_path(identity, sha, ".png"), identity, len(data), time.time_ns(), sha,
                                       1, source="api"), [(0, crop.box)], embedder.embed([crop.image]))
        w.commit()
    return face_id


def identities(index_dir) -> dict[str, int]:
    with GalleryIndex.open(index_dir) as g:
        return {name: faces for name, _, faces in g.store.identities()}


def test_a_folder_photo_removed_through_the_service_stays_out_until_its_file_changes(tmp_path, gallery, model_dir,
                                                                                     rng):
    idx, emb = tmp_path / "idx", PixelEmbedder(model_dir)
    build_index(gallery, idx, emb)
    assert remove_identity_as_the_service_does(idx, emb, "bob") == ["bob/000.png", "bob/001.png"]

    again = PixelEmbedder(model_dir)
    report = build_index(gallery, idx, again)
    assert (report.excluded, report.added, report.written) == (2, 0, False)
    assert "bob" not in identities(idx) and again.embedded == 0  # not even read

    bump_mtime(gallery / "bob" / "000.png")  # touched, same bytes: still the photo that was removed
    report = build_index(gallery, idx, PixelEmbedder(model_dir))
    assert (report.excluded, report.added) == (2, 0)

    write_photo(gallery / "bob" / "001.png", rng)  # new bytes: a new photo, which the folder now holds
    bump_mtime(gallery / "bob" / "001.png")
    report = build_index(gallery, idx, PixelEmbedder(model_dir))
    assert (report.excluded, report.added) == (1, 1)
    assert identities(idx)["bob"] == 1
    assert report.total_files == report.added + report.updated + report.unchanged + len(report.skipped) + \
        report.excluded


def test_an_exclusion_lapses_when_its_file_leaves_the_folder(tmp_path, gallery, model_dir):
    idx, emb = tmp_path / "idx", PixelEmbedder(model_dir)
    build_index(gallery, idx, emb)
    remove_identity_as_the_service_does(idx, emb, "bob")
    kept = (gallery / "bob" / "000.png").read_bytes()
    (gallery / "bob" / "000.png").unlink()
    build_index(gallery, idx, emb)
    with open_writer(idx, card=emb.card, model_dir=model_dir) as w:
        assert [e.path for e in w.exclusions()] == ["bob/001.png"]
    (gallery / "bob" / "000.png").write_bytes(kept)  # put back later: indexed again
    assert build_index(gallery, idx, emb).added == 1


def test_enrolled_photos_survive_folder_builds_and_a_rebuild_embeds_them_again(tmp_path, gallery, model_dir, rng):
    idx, emb = tmp_path / "idx", PixelEmbedder(model_dir)
    build_index(gallery, idx, emb)
    photo = write_photo(tmp_path / "upload.png", rng)
    enrol_as_the_service_does(idx, emb, "dave", photo)
    remove_identity_as_the_service_does(idx, emb, "alice")

    report = build_index(gallery, idx, emb)  # incremental: the folder mirror does not touch them
    assert identities(idx) == {"bob": 2, "carol": 4, "dave": 1}
    assert report.excluded == 3

    rebuilt = PixelEmbedder(model_dir, seed=7)  # e.g. another model: every vector is made again
    report = build_index(gallery, idx, rebuilt, rebuild=True)
    assert (report.rebuilt, report.enrolled, report.excluded) == (True, 1, 3)
    assert identities(idx) == {"bob": 2, "carol": 4, "dave": 1}
    with GalleryIndex.open(idx) as g:
        (dave,) = g.store.ids_of_identity("dave")
        np.testing.assert_allclose(g.vectors([dave])[0], rebuilt.reference([photo])[0], atol=1e-6)
        scores, ids = g.search(rebuilt.reference([photo]), 1)
        assert ids[0, 0] == dave and scores[0, 0] > 0.999


def test_a_rebuild_that_would_lose_enrolled_photos_is_refused(tmp_path, gallery, model_dir, rng):
    idx, emb = tmp_path / "idx", PixelEmbedder(model_dir)
    build_index(gallery, idx, emb)
    enrol_as_the_service_does(idx, emb, "dave", write_photo(tmp_path / "upload.png", rng), keep=False)
    with GalleryIndex.open(idx) as g:
        before = g.manifest.generation
    with pytest.raises(DatasetError) as e:
        build_index(gallery, idx, emb, rebuild=True)
    assert "not in the index's photo store" in str(e.value) and "dave" in str(e.value)
    assert "DELETE /v1/identities/NAME" in str(e.value) and "nothing was written" in str(e.value)
    with GalleryIndex.open(idx) as g:
        assert g.manifest.generation == before and "dave" in {n for n, _, _ in g.store.identities()}


def test_a_face_removed_from_a_group_photo_stays_out_of_a_rebuild(tmp_path, model_dir, rng):
    photos = tmp_path / "photos"
    write_photo(photos / "party" / "group.png", rng, size=64)
    boxes = {"group.png": [(0, 0, 30, 30), (32, 32, 62, 62)]}
    idx, emb = tmp_path / "idx", PixelEmbedder(model_dir, boxes=boxes)
    build_index(photos, idx, emb, faces="all")
    with open_writer(idx, card=emb.card, model_dir=model_dir) as w:
        photo = w.photos_of_identity("party")[0]
        first, second = w.faces_of([photo.path])[photo.path]
        w.remove_faces([second.id])
        w.exclude([exclusion_of(photo, second)])
        w.commit()
    report = build_index(photos, idx, PixelEmbedder(model_dir, boxes=boxes, seed=3), faces="all", rebuild=True)
    assert report.rebuilt and report.vectors == 1
    with GalleryIndex.open(idx) as g:
        (record,) = g.records(g.ids())
        assert record.box == first.box


def test_exclusion_plan_and_face_matching(tmp_path, gallery):
    from facesearch.index.storage.store import Exclusion
    from facesearch.index.sync.scan import scan_folder

    files = scan_folder(gallery).files
    f = files[0]
    plan = plan_exclusions(gallery, files, [Exclusion(f.path, f.size, f.mtime_ns, "x"),
                                            Exclusion("gone/1.png", 1, 1, "y")])
    assert plan.excluded == [f.path] and plan.lapsed == ["gone/1.png"] and len(plan.files) == len(files) - 1
    assert find_face((0, 0, 10, 10), [(50, 50, 60, 60), (1, 1, 10, 11)]) == 1
    assert find_face((0, 0, 10, 10), [(50, 50, 60, 60)]) is None
    assert find_face(None, [None]) == 0
