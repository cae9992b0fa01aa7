"""`facesearch embed` (local engine): photos -> embedding shards holding what the embedder gives each photo."""

from __future__ import annotations

import numpy as np
import pytest
from clitools import ENROLLED, invoke, invoke_json
from real_photos import UNREADABLE, WITH_FACE, WITHOUT_FACE, make_real_gallery

from facesearch.embedder.core.model_card import ModelCard, sha256_file
from facesearch.embedder.embedding_shards import load_shards, open_shards


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embed_writes_one_row_per_photo_with_the_embedders_vector(faces, model_dir, tmp_path):
    from facesearch.embedder.runtime import Embedder

    out = tmp_path / "shards"
    report = invoke_json("embed", "--aligned", faces / "gallery", "--model", model_dir, "--out", out)

    photos = sorted(p.relative_to(faces / "gallery").as_posix() for p in (faces / "gallery").glob("*/*.png"))
    assert (report["photos"], report["embedded"], report["faces"]) == (3 * ENROLLED,) * 3
    assert report["no_face"] == [] and report["skipped"] == [] and report["engine"] == "local"
    assert report["files"] == ["part-00000.parquet"] and report["crops"] == "whole-photo-resize"
    shards = open_shards(out)
    assert shards.card == ModelCard.load(model_dir) and shards.build == {"faces": "largest", "crops": "whole-photo-resize"}
    rows = load_shards(out)
    assert rows.path == photos and rows.identity == [p.split("/")[0] for p in photos]
    assert rows.face.tolist() == [0] * len(photos) and rows.box == [None] * len(photos)
    assert rows.sha256 == [sha256_file(faces / "gallery" / p) for p in photos]
    assert rows.size == [(faces / "gallery" / p).stat().st_size for p in photos]

    embedder = Embedder(model_dir, aligned=True)
    reference = embedder.embed([embedder.faces(faces / "gallery" / p)[0].image for p in photos])
    assert _cosines(rows.embedding, reference).min() >= 0.9999

    r = invoke("embed", "--aligned", faces / "gallery", "--model", model_dir, "--out", out)
    assert r.exit_code == 1 and "is not empty" in r.stderr and "--overwrite" in r.stderr, r.output
    r = invoke("embed", "--aligned", faces / "gallery", "--model", model_dir, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert "60 faces of 60 photos" in r.stdout and f"--from-embeddings {out}" in r.stdout


@pytest.fixture(scope="module")
def real_gallery(tmp_path_factory):
    return make_real_gallery(tmp_path_factory.mktemp("real") / "photos")


def test_embed_real_photos_counts_and_lists_what_it_could_not_use(real_gallery, model_dir, tmp_path):
    from facesearch.embedder.images import read_image
    from facesearch.embedder.runtime import Embedder

    out = tmp_path / "shards"
    report = invoke_json("embed", real_gallery, "--model", model_dir, "--out", out, "--faces", "all",
                         "--batch-size", "3")

    assert (report["photos"], report["embedded"], report["ignored"]) == (8, len(WITH_FACE), 1)
    assert report["no_face"] == WITHOUT_FACE
    assert [s["path"] for s in report["skipped"]] == UNREADABLE
    assert "not an image file" in report["skipped"][0]["reason"]
    assert report["multi_face"] == 1 and report["crops"] == "mtcnn-5-point/sphereface-112x96"
    rows = load_shards(out)
    assert rows.path == ["eileen/astronaut.png", "eileen/grey.png", "eileen/mirrored.jpg", "eileen/small.png",
                         "group.png", "group.png"]
    assert rows.identity == ["eileen"] * 4 + ["group"] * 2 and rows.face.tolist() == [0, 0, 0, 0, 0, 1]
    assert report["faces"] == len(rows) == 6

    embedder = Embedder(model_dir)  # the reference: each photo on its own, every face, detector order
    expected_boxes, expected = [], []
    for path in WITH_FACE:
        crops = embedder.faces(real_gallery / path)
        expected_boxes += [c.box for c in crops]
        expected.append(embedder.embed([c.image for c in crops]))
    np.testing.assert_allclose(np.array(rows.box), np.array(expected_boxes), atol=1e-4)
    assert _cosines(rows.embedding, np.concatenate(expected)).min() >= 0.9999
    # The boxes are where the faces are: one in each half of the group photo (Eileen left, the cameraman right).
    width = read_image(real_gallery / "group.png").shape[1]
    left, right = sorted([rows.box[4], rows.box[5]])
    assert left[2] <= width / 2 <= right[0]

    r = invoke("embed", real_gallery, "--model", model_dir, "--out", tmp_path / "text")
    assert r.exit_code == 0, r.output
    assert "2 photo(s) without a face:\n  cat/chelsea.png\n  cup/coffee.png" in r.stdout
    assert "skipped 1 unreadable file(s):\n  broken/bad.jpg: not an image file" in r.stdout
    assert len(load_shards(tmp_path / "text")) == 5  # largest face only: one row per photo with a face


def test_embed_strict_and_faceless_runs_commit_nothing(real_gallery, model_dir, tmp_path):
    r = invoke("embed", real_gallery, "--model", model_dir, "--out", tmp_path / "strict", "--strict")
    assert r.exit_code == 1 and "Error: cannot read image" in r.stderr and "bad.jpg" in r.stderr, r.output
    assert not (tmp_path / "strict" / "model_card.json").exists()
    assert not list((tmp_path / "strict").glob("*.parquet"))

    r = invoke("embed", real_gallery / "cat", "--model", model_dir, "--out", tmp_path / "none")
    assert r.exit_code == 1 and "Error: no face vectors could be made" in r.stderr, r.output
    assert "1 without a face (first: chelsea.png)" in r.stderr
    assert list((tmp_path / "none").iterdir()) == []


def test_embed_option_errors(faces, model_dir, tmp_path):
    r = invoke("embed", faces / "gallery", "--out", tmp_path / "s", "--engine", "spark")
    assert r.exit_code == 2 and "expected one of local, ray" in r.output
    r = invoke("embed", faces / "gallery", "--out", tmp_path / "s", "--address", "ray://x:1")
    assert r.exit_code == 2 and "need --engine ray" in r.output
    r = invoke("embed", tmp_path / "absent", "--model", model_dir, "--out", tmp_path / "s")
    assert r.exit_code == 1 and "does not exist" in r.stderr
