"""Real faces on every machine, each step against its reference.

scikit-image (a dev dependency) ships two public-domain photos of people: `astronaut` (Eileen
Collins, NASA) and `camera` (the cameraman). They run here through detection (vs the `mtcnn`
package), photo decoding in every form a user sends (vs the plain decode), alignment, dlib's
landmarks (vs dlib itself) and the default model (vs dlib's own descriptor), so that none of
these passes on a machine without LFW merely because no face was ever found.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photos: pip install scikit-image")

from dlib_fixtures import dlib_module, weights_file  # noqa: E402

from facesearch.embedder.align import ARCFACE_112X112, align_face, similarity_transform  # noqa: E402
from facesearch.embedder.detect import Detector  # noqa: E402
from facesearch.embedder.images import read_image  # noqa: E402

ASTRONAUT = skimage_data.astronaut()  # (512, 512, 3) uint8
EXIF_ORIENTATION = 0x0112


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _only_face(image: np.ndarray):
    faces = Detector().detect(image)
    assert len(faces) == 1, [f.box for f in faces]
    return faces[0]


def test_detector_finds_what_the_mtcnn_package_finds():
    pytest.importorskip("tensorflow", reason="the reference, the mtcnn package, runs on TensorFlow")
    from mtcnn import MTCNN

    for image in (ASTRONAUT, _rgb(skimage_data.camera())):
        ours = Detector().detect_array(image)
        theirs = MTCNN().detect_faces(image.astype(np.float32), output_type="numpy", box_format="xyxy")
        assert len(ours) == len(theirs) == 1
        # Columns: image, box (4), score, landmark x (5), landmark y (5).
        np.testing.assert_allclose(ours[:, 1:16], theirs[:, 1:16], atol=0.01)


def _save_variant(image: np.ndarray, kind: str, path) -> tuple[np.ndarray, float]:
    """Write `image` as a user might send it; returns (the matrix that maps a point of `image` to
    the decoded photo, as a 2x3 affine) and how far a face may move in pixels of the decoded photo."""
    h, w = image.shape[:2]
    identity = np.float64([[1, 0, 0], [0, 1, 0]])
    if kind == "jpeg":
        Image.fromarray(image).save(path, quality=85)
        return identity, 2.0
    if kind == "grey png":
        Image.fromarray(image).convert("L").save(path)
        return identity, 2.0
    if kind == "rgba png":  # alpha: a transparent border, composited over white when read
        alpha = np.zeros((h, w), np.uint8)
        alpha[32:-32, 32:-32] = 255
        Image.fromarray(np.dstack([image, alpha])).save(path)
        return identity, 2.0
    if kind == "exif-rotated jpeg":  # the pixels lie on their side; the EXIF tag says to turn them
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
        Image.fromarray(np.rot90(image, k=1)).save(path, exif=exif, quality=92)
        return identity, 2.0
    if kind == "large":  # 4x: searched at the detector's max_side, mapped back
        Image.fromarray(image).resize((4 * w, 4 * h), Image.Resampling.BICUBIC).save(path, quality=92)
        return 4 * identity, 8.0
    if kind == "small":
        Image.fromarray(image).resize((w // 2, h // 2), Image.Resampling.LANCZOS).save(path)
        return identity / 2, 2.0
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["jpeg", "grey png", "rgba png", "exif-rotated jpeg", "large", "small"])
def test_the_face_is_found_whatever_form_the_photo_takes(tmp_path, kind):
    reference = _only_face(ASTRONAUT)
    path = tmp_path / ("photo.png" if "png" in kind else "photo.jpg")
    to_photo, tolerance = _save_variant(ASTRONAUT, kind, path)

    photo = read_image(path)

    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    faces = Detector().detect(photo)
    assert faces, "no face found"
    # Enlarged 4x, a few tiny face-like patterns on the suit become detectable too: take the largest.
    face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    expected = reference.landmarks @ to_photo[:, :2].T + to_photo[:, 2]
    np.testing.assert_allclose(face.landmarks, expected, atol=tolerance)


def test_a_photo_without_a_person_has_no_face():
    for name in ("coffee", "chelsea", "horse"):  # a cup, a cat, a horse's silhouette
        assert Detector().detect(_rgb(getattr(skimage_data, name)())) == []


def test_alignment_carries_the_landmarks_to_the_template():
    face = _only_face(ASTRONAUT)
    marked = ASTRONAUT.copy()
    yy, xx = np.mgrid[:512, :512]
    for x, y in face.landmarks:  # a white disc of radius 3 on each landmark
        marked[(xx - x) ** 2 + (yy - y) ** 2 <= 9] = 255
    crop = align_face(marked, face.landmarks, ARCFACE_112X112)
    blank = align_face(ASTRONAUT, face.landmarks, ARCFACE_112X112)

    # Where each disc landed in the crop, against where the fitted transform sends the landmark.
    matrix = similarity_transform(face.landmarks, ARCFACE_112X112.points)
    sent = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    changed = np.abs(crop.astype(int) - blank.astype(int)).sum(axis=2) > 60
    cy, cx = np.nonzero(changed)
    for x, y in sent:
        near = (np.abs(cx - x) < 6) & (np.abs(cy - y) < 6)
        assert near.sum() >= 5, f"no disc near ({x:.1f}, {y:.1f})"
        assert abs(cx[near].mean() - x) < 1.0 and abs(cy[near].mean() - y) < 1.0
    # And the fit itself: a face this frontal lands within a few pixels of every template point.
    assert np.abs(sent - ARCFACE_112X112.points).max() < 6


def test_dlib_landmarks_port_matches_dlib_on_a_real_face():
    dlib = dlib_module()
    weights = weights_file()
    from facesearch.embedder.dlib.shape_predictor import load_shape_predictor

    rect = dlib.get_frontal_face_detector()(ASTRONAUT, 1)[0]
    reference = dlib.shape_predictor(str(weights.parent / "shape_predictor_5_face_landmarks.dat"))(ASTRONAUT, rect)
    ours = load_shape_predictor().predict(ASTRONAUT, (rect.left(), rect.top(), rect.right(), rect.bottom()))
    np.testing.assert_array_equal(ours, np.array([[p.x, p.y] for p in reference.parts()]))


def test_default_model_embeds_real_faces_as_dlib_does(installed_default_model, tmp_path, monkeypatch):
    dlib = dlib_module()
    weights = weights_file()
    from facesearch.embedder.dlib.models import installed_model_dir
    from facesearch.embedder.runtime import Embedder

    monkeypatch.setenv("FACESEARCH_CACHE", str(installed_default_model[0]))
    embedder = Embedder(installed_model_dir())

    def dlib_descriptor(image):
        rect = dlib.get_frontal_face_detector()(image, 1)[0]
        shape = dlib.shape_predictor(str(weights.parent / "shape_predictor_5_face_landmarks.dat"))(image, rect)
        chip = dlib.get_face_chip(image, shape, 150, 0.25)
        v = np.array(dlib.face_recognition_model_v1(str(weights)).compute_face_descriptor(chip))
        return chip, v / np.linalg.norm(v)

    def ours(image, name):
        Image.fromarray(image).save(tmp_path / name)
        (face,) = embedder.faces(tmp_path / name)
        return embedder.embed([face.image])[0]

    chip, reference = dlib_descriptor(ASTRONAUT)
    # The ONNX model on dlib's own chip is dlib's network (measured: cosine 1 - 1e-8).
    assert float(embedder.embed([chip])[0] @ reference) >= 0.9999
    # facesearch's whole path (MTCNN, the ported predictor, the chip) lands on nearly the same vector
    # (measured 0.9989).
    astronaut = ours(ASTRONAUT, "astronaut.png")
    assert float(astronaut @ reference) >= 0.99
    # The same person in a mirrored photo is the same person at the model card's threshold; the
    # cameraman is not (the card's best-accuracy threshold on LFW pairs: 0.903).
    same = float(ours(ASTRONAUT[:, ::-1].copy(), "mirrored.png") @ astronaut)
    other = float(ours(_rgb(skimage_data.camera()), "camera.png") @ astronaut)
    threshold = embedder.card.thresholds["best_accuracy"]
    assert same > threshold > other, (same, threshold, other)
