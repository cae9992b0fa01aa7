"""The Python API with the default model on real faces, against numpy references and the CLI's answers.

The gallery is eileen (astronaut.jpg) and cameraman (camera.png); see conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import facesearch
from facesearch.cli.main import app


@pytest.fixture
def gallery(workdir):
    g = facesearch.open(workdir / "people-index")
    report = g.add(workdir / "photos")
    assert (report.added, report.vectors, report.identities) == (2, 2, 2)
    yield g
    g.close()


def test_search_ranks_each_face_as_a_numpy_brute_force_does(gallery, workdir):
    result = gallery.search("group.jpg", k=2)
    assert isinstance(result, facesearch.SearchResult) and len(result) == 2
    # Reference: every face's vector against the gallery photos' vectors, best first.
    stored = {f.image.split("/")[-2]: f.vector for f in facesearch.embed(sorted(map(str, workdir.glob("photos/*/*"))))}
    names = sorted(stored)
    xb = np.stack([stored[n] for n in names])
    faces = facesearch.embed("group.jpg")
    assert [f.box for f in faces] == [f.box for f in result]
    for face, embedded in zip(result, faces):
        scores = xb @ embedded.vector
        order = np.argsort(-scores)
        assert [m.identity for m in face.matches] == [names[i] for i in order]
        np.testing.assert_allclose([m.score for m in face.matches], scores[order], rtol=1e-5, atol=1e-6)
        assert face.score == face.matches[0].score
        assert face.identity == (face.matches[0].identity if face.score >= face.threshold else None)
    assert {f.identity for f in result} == {"eileen", "cameraman"}
    assert result.threshold_source == "model-card" and result.threshold == pytest.approx(0.9262)


def test_the_cli_prints_the_api_answer(gallery, workdir):
    r = CliRunner().invoke(app, ["query", "group.jpg", "--index", str(gallery.index_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads(json.dumps(gallery.search("group.jpg").to_dict()))


def test_an_image_gives_one_answer_whatever_form_it_comes_in(gallery, workdir):
    by_path = gallery.search("a.jpg").to_dict()
    pixels = np.asarray(Image.open("a.jpg").convert("RGB"))
    for image in (open("a.jpg", "rb").read(), Image.open("a.jpg"), pixels):
        answer = gallery.search(image).to_dict()
        assert answer["faces"] == by_path["faces"], type(image)
    grey = gallery.search(pixels.mean(axis=2).astype(np.uint8))  # no colour: still a face, still her
    assert grey[0].identity == "eileen"
    for bad, why in ((pixels.astype(np.float32), "uint8"), (pixels[..., :2], "shape"), (3.5, "expected a path")):
        with pytest.raises(facesearch.ImageReadError, match=why):
            gallery.search(bad)
    with pytest.raises(facesearch.ImageReadError):
        gallery.search(b"not an image")
    with pytest.raises(facesearch.NoFaceFoundError):
        gallery.search("no_face.png")


def test_verify_is_the_dot_product_of_the_two_largest_faces_against_the_card_threshold(workdir, default_model):
    same = facesearch.verify("a.jpg", "b.jpg")
    a, b = facesearch.embed(["a.jpg", "b.jpg"], faces="largest")
    assert same.score == pytest.approx(float(a.vector @ b.vector), abs=1e-6)
    card = json.loads((default_model / "model_card.json").read_text())
    assert same.threshold == pytest.approx(card["thresholds"]["far_1e-3"]) and same.threshold_source == "model-card"
    assert same.same is (same.score >= same.threshold) and same.same  # a photo and its mirror image
    other = facesearch.verify("a.jpg", "photos/cameraman/camera.png")
    assert not other.same and other.score < same.score
    assert facesearch.verify("a.jpg", "photos/cameraman/camera.png", threshold=-1.0).same
    r = CliRunner().invoke(app, ["verify", "a.jpg", "b.jpg", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads(json.dumps(same.to_dict()))


def test_detect_and_embed(workdir):
    faces = facesearch.detect("group.jpg")
    assert len(faces) == 2 and all(0.8 <= f.score <= 1.0 for f in faces)
    width = Image.open("group.jpg").width
    assert sorted(f.box[0] < width / 2 for f in faces) == [False, True]  # one face in each half
    assert all(len(f.landmarks) == 5 for f in faces)
    vectors = facesearch.embed(["group.jpg", "no_face.png", "a.jpg"])
    assert [(v.image, v.face) for v in vectors] == [("group.jpg", 0), ("group.jpg", 1), ("a.jpg", 0)]
    for v in vectors:
        assert v.vector.shape == (128,) and v.vector.dtype == np.float32
        assert np.linalg.norm(v.vector) == pytest.approx(1.0, abs=1e-5)


def test_enrol_then_remove(gallery, workdir):
    first = gallery.enrol("ada.jpg", "Ada Lovelace")
    assert first.new and first.photo.startswith(".enrolled/Ada Lovelace/") and first.faces_found == 1
    assert (gallery.index_dir / "photos").is_dir()
    again = gallery.enrol("ada.jpg", "Ada Lovelace")
    assert not again.new and again.id == first.id and again.generation == first.generation
    ranked = [m.identity for m in gallery.search("b.jpg", k=3)[0].matches]
    assert set(ranked) == {"Ada Lovelace", "eileen", "cameraman"}
    assert ranked[0] == "Ada Lovelace"  # ada.jpg is b.jpg: the same pixels score 1.0

    removed = gallery.remove("Ada Lovelace")
    assert (removed.identity, removed.faces_removed, removed.photos_removed) == ("Ada Lovelace", 1, 1)
    assert "Ada Lovelace" not in [m.identity for m in gallery.search("b.jpg", k=3)[0].matches]
    assert not any((gallery.index_dir / "photos").rglob("*.jpg"))  # its stored photo went with it
    with pytest.raises(facesearch.IdentityNotFoundError, match="'Ada Lovelace' is not in the index"):
        gallery.remove("Ada Lovelace")
    with pytest.raises(facesearch.FaceNotFoundError):
        gallery.remove_face(10_000)
    with pytest.raises(facesearch.FaceSearchError, match="face must be 0 to 1"):
        gallery.enrol("group.jpg", "Two People", face=2)
    for bad in ("", "a/b", "..", " padded", "x" * 129):  # the service's rule, from the same function
        with pytest.raises(facesearch.IdentityNameError, match="printable characters, without '/'"):
            gallery.enrol("ada.jpg", bad)


def test_the_cli_removes_through_the_api(gallery, workdir):
    index = str(gallery.index_dir)
    r = CliRunner().invoke(app, ["remove", "cameraman", "--index", index, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["faces_removed"] == 1 and json.loads(r.stdout)["excluded"] == ["cameraman/camera.png"]
    assert [m.identity for m in gallery.search("a.jpg")[0].matches] == ["eileen"]
    r = CliRunner().invoke(app, ["remove", "cameraman", "--index", index])
    assert r.exit_code == 1 and "Error: identity 'cameraman' is not in the index" in r.stderr
    assert gallery.add(workdir / "photos").identities == 1  # the folder's photo stays out of later builds


def test_a_held_lock_is_index_busy(gallery):
    from facesearch.index import open_writer

    card, model_dir = gallery._recorded_card()
    with open_writer(gallery.index_dir, card=card, model_dir=model_dir):
        gallery.wait = 0.0
        with pytest.raises(facesearch.IndexBusyError, match="another build is writing the index"):
            gallery.enrol("ada.jpg", "Ada")
    assert gallery.enrol("ada.jpg", "Ada").new  # free again


@pytest.mark.parametrize("module", ["facesearch", "facesearch.api", "facesearch.cli.main"])
def test_import_loads_no_numerical_runtime(module):
    # `facesearch --help` imports facesearch.cli.main: it must stay as light as Typer itself.
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'faiss', 'tensorflow', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_compact_and_policy_through_the_api(gallery, workdir):
    with pytest.raises(facesearch.FaceSearchError, match="--index-type takes one of auto, flat, hnsw, ivf, got 'b-tree'"):
        gallery.add(workdir / "photos", index_type="b-tree")
    gallery.enrol("ada.jpg", "Ada")  # a second segment
    done = gallery.compact(target_recall=0.95, memory_budget="64M")
    assert isinstance(done, facesearch.Compaction) and done.written
    assert (done.before["segments"], done.after["segments"], done.faces) == (2, 1, 3)
    from facesearch.index import read_manifest

    policy = read_manifest(gallery.index_dir).policy
    assert (policy.target_recall, policy.memory_budget) == (0.95, 64 << 20)
    r = CliRunner().invoke(app, ["compact", "--index", str(gallery.index_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)) == set(done.to_dict()) and json.loads(r.stdout)["written"] is False


def test_remove_a_photo_by_its_path(gallery, workdir):
    enrolled = gallery.enrol("ada.jpg", "Ada")
    with pytest.raises(facesearch.PhotoNotFoundError, match="photo 'nobody/x.jpg' is not in the index"):
        gallery.remove_photo("nobody/x.jpg")
    r = CliRunner().invoke(app, ["remove", "--photo", "eileen/astronaut.jpg", "--index", str(gallery.index_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) | {"generation": 0} == {"identity": "eileen", "faces_removed": 1, "photos_removed": 1,
                                                        "excluded": ["eileen/astronaut.jpg"], "generation": 0}
    removed = gallery.remove_photo(enrolled.photo)  # an enrolled photo: its stored file goes too
    assert (removed.identity, removed.excluded) == ("Ada", ())
    assert [m.identity for m in gallery.search("a.jpg")[0].matches] == ["cameraman"]
    r = CliRunner().invoke(app, ["remove", "Ada", "--photo", "x.jpg", "--index", str(gallery.index_dir)])
    assert r.exit_code == 2 and "pass one of IDENTITY, --face ID or --photo PATH" in r.output


def test_embed_in_chunks_keeps_input_order_and_vectors(workdir, monkeypatch):
    import facesearch.embedder.core.constants as constants

    one_by_one = [facesearch.embed(p) for p in ("a.jpg", "no_face.png", "group.jpg", "b.jpg", "a.jpg")]
    monkeypatch.setattr(constants, "DEFAULT_BATCH_SIZE", 2)  # chunks of 2 images: 3 model calls
    chunked = facesearch.embed(["a.jpg", "no_face.png", "group.jpg", "b.jpg", "a.jpg"])
    expected = [f for faces in one_by_one for f in faces]
    assert [(f.image, f.face, f.box) for f in chunked] == [(f.image, f.face, f.box) for f in expected]
    for got, want in zip(chunked, expected):
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-6)
