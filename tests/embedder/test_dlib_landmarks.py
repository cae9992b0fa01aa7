"""dlib's landmarks and chip for MTCNN's faces: the placed rectangle, and the Embedder's dlib-150 crops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))

from dlib_fixtures import dlib_module, lfw_photos, weights_file  # noqa: E402

from facesearch.embedder.align import ARCFACE_112X112, DLIB_150, align_face  # noqa: E402
from facesearch.embedder.core.model_card import ModelCard, sha256_file  # noqa: E402
from facesearch.embedder.detect import Detector  # noqa: E402
from facesearch.embedder.dlib.chip import extract_dlib_chip  # noqa: E402
from facesearch.embedder.dlib.landmarks import align_dlib_face, dlib_landmarks, dlib_rect  # noqa: E402
from facesearch.embedder.dlib.shape_predictor import SHAPE_FILE  # noqa: E402
from facesearch.embedder.images import read_image  # noqa: E402
from facesearch.embedder.runtime import Embedder  # noqa: E402


@pytest.fixture(scope="module")
def lfw_faces():
    """(photo, MTCNN landmarks, dlib's detector rectangle) of LFW faces both detectors find."""
    dlib = dlib_module()
    weights_file()
    detect, detector, out = dlib.get_frontal_face_detector(), Detector(), []
    for path in lfw_photos(12, step=613):
        image = read_image(path)
        boxes, faces = detect(image, 1), detector.detect(image)  # upsampled once, as the fit was
        if len(boxes) == 1 and faces:
            box = boxes[0]
            out.append((image, faces[0].landmarks, (box.left(), box.top(), box.right(), box.bottom())))
    assert len(out) >= 6
    return out


def test_square_rect_from_landmarks():
    # A face twice as large and moved: the rectangle scales and moves with it, and stays square.
    marks = np.array([[30, 40], [70, 40], [50, 62], [34, 80], [66, 80]], np.float64)
    left, top, right, bottom = dlib_rect(marks)
    assert right - left == bottom - top > 40
    l2, t2, r2, b2 = dlib_rect(marks * 2 + 100)
    assert abs((r2 - l2) - 2 * (right - left)) <= 1 and abs(l2 - (2 * left + 100)) <= 1


def test_placed_rect_is_near_dlibs_detector(lfw_faces):
    offsets, ratios = [], []
    for _image, marks, (left, top, right, bottom) in lfw_faces:
        placed = np.array(dlib_rect(marks), np.float64)
        centre = np.array([left + right, top + bottom]) / 2
        offsets.append(np.linalg.norm((placed[:2] + placed[2:]) / 2 - centre) / (right - left))
        ratios.append((placed[2] - placed[0]) / (right - left))
    # dlib's boxes jitter from face to face (held-out median offset ~3% of the side, benchmark)
    assert np.median(offsets) < 0.06 and abs(np.median(ratios) - 1) < 0.1, (offsets, ratios)


def test_landmarks_near_dlibs_own(lfw_faces):
    dlib = dlib_module()
    ref = dlib.shape_predictor(str(weights_file().parent / SHAPE_FILE))
    errors = []
    for image, marks, rect in lfw_faces:
        want = np.array([[p.x, p.y] for p in ref(image, dlib.rectangle(*rect)).parts()], np.float64)
        iod = np.linalg.norm(want[:2].mean(0) - want[2:4].mean(0))
        errors.append(np.linalg.norm(dlib_landmarks(image, marks) - want, axis=1).mean() / iod)
    assert np.median(errors) < 0.03, errors  # MTCNN's own points miss dlib's chip by ~4x more


def test_chip_is_dlibs_chip_of_those_landmarks(lfw_faces):
    dlib = dlib_module()
    ref = dlib.shape_predictor(str(weights_file().parent / SHAPE_FILE))
    image, marks, _ = lfw_faces[0]
    shape = ref(image, dlib.rectangle(*dlib_rect(marks)))
    got = align_dlib_face(image, marks)
    assert np.abs(got.astype(int) - dlib.get_face_chip(image, shape, 150, 0.25)).max() <= 1


def _write_model(folder: Path, size: int, template: str) -> None:
    """A linear (size x size x 3 -> 4) ONNX model whose card names `template`."""
    weights = np.random.default_rng(0).standard_normal((size * size * 3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["embedding"])], "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array([-1, size * size * 3], np.int64), "flat_shape"),
         numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    ModelCard(name=f"linear-{template}", input_height=size, input_width=size, embedding_size=4,
              alignment_template=template, onnx_sha256=sha256_file(folder / "model.onnx")).save(folder)


def test_embedder_cuts_dlibs_chip_for_dlib_150_only(tmp_path, lfw_faces):
    image = lfw_faces[0][0]
    _write_model(tmp_path / "dlib", 150, DLIB_150.name)
    _write_model(tmp_path / "arcface", 112, ARCFACE_112X112.name)
    (face,) = Embedder(tmp_path / "dlib").faces_in(image)[:1]
    np.testing.assert_array_equal(face.image, align_dlib_face(image, face.landmarks))
    np.testing.assert_array_equal(face.image, extract_dlib_chip(image, dlib_landmarks(image, face.landmarks)))
    assert not np.array_equal(face.image, align_face(image, face.landmarks, DLIB_150))
    np.testing.assert_array_equal(face.landmarks, Detector().detect(image)[0].landmarks)  # MTCNN's, reported
    (face,) = Embedder(tmp_path / "arcface").faces_in(image)[:1]
    np.testing.assert_array_equal(face.image, align_face(image, face.landmarks, ARCFACE_112X112))


def test_import_parses_nothing_and_loads_no_tensorflow():
    script = ("import sys, facesearch.embedder.runtime, facesearch.embedder.dlib.landmarks, facesearch.embedder.dlib.shape_predictor as s\n"
              "print(s._load.cache_info().currsize, "
              "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'dlib')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0 []", out.stdout
