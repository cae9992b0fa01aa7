"""build-index, query and detect on raw photos: detection + alignment end to end through the CLI.

The model is a hand-built ONNX "pixel projection" (4x4 average pooling, then a fixed random matrix)
with an arcface-112x112 card: no training needed, and a face cropped from the same pixels twice
embeds to (nearly) the same vector, so identities are told apart by the photos they came from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facesearch.cli.main import app
from facesearch.embedder.core.model_card import ModelCard, sha256_file

LFW = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).parents[3] / "shared" / "lfw"))
LFW_IMAGES = LFW / "images_deepfunneled"
pytestmark = pytest.mark.skipif(not LFW_IMAGES.is_dir(), reason=f"LFW not found at {LFW} (set FACESEARCH_LFW)")

PEOPLE = {"bush": "George_W_Bush/George_W_Bush_0001.jpg", "powell": "Colin_Powell/Colin_Powell_0001.jpg",
          "serena": "Serena_Williams/Serena_Williams_0001.jpg"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def invoke_json(*args) -> dict:
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _projection_model(folder: Path, template: str = "arcface-112x112") -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    proj = rng.standard_normal((3 * 28 * 28, 64)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("AveragePool", ["nchw"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "proj"], ["embedding"])]
    graph = helper.make_graph(
        nodes, "pixel-projection",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 112, 112, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 64])],
        initializer=[numpy_helper.from_array(proj, "proj")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    ModelCard(name="pixel-projection", input_height=112, input_width=112, embedding_size=64,
              alignment_template=template, onnx_sha256=sha256_file(folder / "model.onnx")).save(folder)
    return folder


def _side_by_side(a: Path, b: Path, out: Path) -> Path:
    Image.fromarray(np.concatenate([np.asarray(Image.open(a)), np.asarray(Image.open(b))], axis=1)).save(out)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Gallery of raw photos in every awkward form, plus probes."""
    root = tmp_path_factory.mktemp("raw")
    gallery = root / "gallery"
    for person, name in PEOPLE.items():
        (gallery / person).mkdir(parents=True)
        shutil.copy(LFW_IMAGES / name, gallery / person / "plain.jpg")
    bush = Image.open(LFW_IMAGES / PEOPLE["bush"])
    bush.convert("L").save(gallery / "bush" / "grey.png")
    rgba = bush.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(gallery / "bush" / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 degrees counter-clockwise; viewers turn it back
    bush.transpose(Image.Transpose.ROTATE_90).save(gallery / "bush" / "exif.jpg", quality=98, exif=exif)
    Image.fromarray(np.full((160, 200, 3), 90, np.uint8)).save(gallery / "serena" / "wall.png")  # no face
    _side_by_side(LFW_IMAGES / PEOPLE["powell"], LFW_IMAGES / PEOPLE["serena"], gallery / "powell" / "pair.png")
    probes = root / "probes"
    probes.mkdir()
    _side_by_side(LFW_IMAGES / PEOPLE["bush"], LFW_IMAGES / PEOPLE["powell"], probes / "bush_powell.png")
    Image.fromarray(np.full((120, 120, 3), 200, np.uint8)).save(probes / "blank.png")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _projection_model(tmp_path_factory.mktemp("proj") / "model")


@pytest.fixture(scope="module")
def index_dir(photos, model_dir, tmp_path_factory):
    index = tmp_path_factory.mktemp("idx") / "index"
    report = invoke_json("build-index", photos / "gallery", "--model", model_dir, "--index", index)
    assert report["no_face"] == 1 and report["multi_face"] == 1, report
    assert report["vectors"] == 7 and report["faces_policy"] == "largest" and not report["aligned"], report
    return index


def test_build_index_embeds_grey_rgba_and_exif_rotated_photos_alike(index_dir, model_dir, photos):
    from facesearch.embedder.runtime import Embedder

    embedder = Embedder(model_dir)
    crops = {p.name: embedder.faces(p) for p in (photos / "gallery" / "bush").iterdir()}
    assert all(len(c) == 1 for c in crops.values()), crops
    vectors = {name: embedder.embed([c[0].image])[0] for name, c in crops.items()}
    for name in ("rgba.png", "exif.jpg"):
        assert vectors[name] @ vectors["plain.jpg"] > 0.99, name
    for name in ("exif.jpg", "grey.png"):
        np.testing.assert_allclose(crops[name][0].box, crops["plain.jpg"][0].box, atol=3, err_msg=name)
    grey, plain = crops["grey.png"][0].image.astype(float), crops["plain.jpg"][0].image.astype(float)
    assert np.all(grey[..., 0] == grey[..., 2])  # the same face, colour gone
    assert np.abs(grey[..., 0] - plain @ [0.299, 0.587, 0.114]).mean() < 8


def test_build_index_all_faces_keeps_both_faces_of_the_pair(photos, model_dir, tmp_path):
    report = invoke_json("build-index", photos / "gallery", "--model", model_dir, "--index", tmp_path / "i",
                         "--faces", "all")
    assert report["vectors"] == 8 and report["multi_face"] == 1 and report["faces_policy"] == "all"
    r = invoke("build-index", photos / "gallery", "--model", model_dir, "--index", tmp_path / "i")
    assert r.exit_code == 0, r.output
    assert "1 photo(s) without a face, 1 with several" in r.stdout


def test_query_answers_each_face_of_a_two_face_photo_with_its_box(photos, index_dir):
    answer = invoke_json("query", photos / "probes" / "bush_powell.png", "--index", index_dir)
    faces = sorted(answer["faces"], key=lambda f: f["box"][0])
    assert len(faces) == 2, faces
    assert faces[0]["box"][2] < 250 < faces[1]["box"][0]
    assert [f["matches"][0]["identity"] for f in faces] == ["bush", "powell"]
    assert all(f["matches"][0]["score"] > 0.95 for f in faces)
    text = invoke("query", photos / "probes" / "bush_powell.png", "--index", index_dir)
    assert text.exit_code == 0, text.output
    assert "face 1 at" in text.stdout and "face 2 at" in text.stdout


def test_query_without_a_face_fails_clearly(photos, index_dir):
    r = invoke("query", photos / "probes" / "blank.png", "--index", index_dir)
    assert r.exit_code == 1, r.output
    assert "no face found in" in r.stderr and "blank.png" in r.stderr


def test_query_aligned_skips_detection(photos, index_dir):
    answer = invoke_json("query", photos / "probes" / "blank.png", "--index", index_dir, "--aligned")
    (face,) = answer["faces"]
    assert face["box"] is None


def test_detect_draws_boxes_and_writes_aligned_crops(photos, tmp_path):
    answer = invoke_json("detect", photos / "probes" / "bush_powell.png", "--out", tmp_path / "ann.png",
                         "--crops", tmp_path / "crops", "--template", "sphereface-112x96")
    assert len(answer["faces"]) == 2 and answer["template"] == "sphereface-112x96"
    assert all(len(f["landmarks"]) == 5 and f["score"] > 0.9 for f in answer["faces"])
    crops = sorted((tmp_path / "crops").glob("*.png"))
    assert [c.name for c in crops] == ["bush_powell_1.png", "bush_powell_2.png"]
    assert Image.open(crops[0]).size == (96, 112)
    annotated = np.asarray(Image.open(tmp_path / "ann.png"))
    original = np.asarray(Image.open(photos / "probes" / "bush_powell.png"))
    assert annotated.shape == original.shape and (annotated != original).any()


def test_query_on_raw_photos_never_imports_tensorflow(photos, index_dir, without_tensorflow):
    out = without_tensorflow("query", photos / "probes" / "bush_powell.png", "--index", index_dir, "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(f["matches"][0]["identity"] for f in json.loads(out.stdout)["faces"]) == ["bush", "powell"]


def test_a_template_of_another_size_than_the_model_input_is_refused(tmp_path):
    from facesearch.embedder.core.errors import ModelSpecError
    from facesearch.embedder.runtime import Embedder

    model = _projection_model(tmp_path / "m", template="sphereface-112x96")
    with pytest.raises(ModelSpecError, match="112x112 inputs but its alignment template 'sphereface-112x96'"):
        Embedder(model)
    assert Embedder(model, aligned=True).aligned  # pre-aligned crops need no template
