"""MTCNN on ONNX Runtime: the cascade's numpy pieces, the nets and whole detections vs the `mtcnn` package."""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.embedder.detect.cascade import (
    Detector,
    DetectorConfig,
    crop_and_resize,
    nms,
    pyramid_scales,
    resize_area,
)
from facesearch.embedder.images import read_image

LFW = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).parents[3] / "shared" / "lfw"))
LFW_IMAGES = LFW / "images_deepfunneled"
needs_lfw = pytest.mark.skipif(not LFW_IMAGES.is_dir(), reason=f"LFW not found at {LFW} (set FACESEARCH_LFW)")
PHOTOS = ["George_W_Bush/George_W_Bush_0001.jpg", "Colin_Powell/Colin_Powell_0001.jpg",
          "Serena_Williams/Serena_Williams_0001.jpg", "Tony_Blair/Tony_Blair_0002.jpg",
          "Gloria_Macapagal_Arroyo/Gloria_Macapagal_Arroyo_0001.jpg"]


@pytest.fixture(scope="module")
def detector():
    return Detector()


def _reference_nms(boxes, threshold, method):
    keep = []
    for j in range(len(boxes)):
        ok = True
        for i in range(j):  # every earlier (better) box counts, kept or not: the package's rule
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            ai = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            aj = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            denom = ai + aj - iw * ih if method == "union" else min(ai, aj)
            ok &= iw * ih / denom <= threshold
        if ok:
            keep.append(j)
    return keep


@pytest.mark.parametrize("method", ["union", "min"])
def test_nms_matches_a_brute_force_loop(method):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (60, 2))], axis=1)
    np.testing.assert_array_equal(nms(boxes, 0.4, method), _reference_nms(boxes, 0.4, method))


def test_resize_area_averages_blocks_and_fractions():
    x = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    np.testing.assert_allclose(resize_area(x, 2, 2)[..., 0], [[2.5, 4.5], [10.5, 12.5]])
    # 3 -> 2 columns: each output covers 1.5 inputs: (a + b/2) / 1.5 and (b/2 + c) / 1.5.
    row = np.array([[[3.0], [6.0], [9.0]]], np.float32)
    np.testing.assert_allclose(resize_area(row, 1, 2)[0, :, 0], [4.0, 8.0])


def test_pyramid_starts_at_12_over_min_face_size_and_shrinks_by_the_factor():
    scales = pyramid_scales(250, 250, 20, 0.709)
    assert scales[0] == pytest.approx(0.6)
    np.testing.assert_allclose(scales[1:] / scales[:-1], 0.709)
    assert 250 * scales[-1] >= 12 * 0.709  # the last level still holds about one 12 px window


def test_no_face_in_noise_or_a_flat_image(detector):
    rng = np.random.default_rng(0)
    assert detector.detect(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) == []
    assert detector.detect(np.full((200, 200, 3), 128, np.uint8)) == []


def test_tiny_photos_and_a_large_min_face_size_find_nothing_without_failing():
    # min_face_size 150 on 100 px: every pyramid level is under P-Net's 12 px window.
    assert Detector(DetectorConfig(min_face_size=150)).detect(np.full((100, 100, 3), 128, np.uint8)) == []
    assert Detector().detect(np.zeros((8, 8, 3), np.uint8)) == []


def test_detect_rejects_a_non_rgb_array(detector):
    with pytest.raises(ValueError, match="RGB"):
        detector.detect(np.zeros((50, 50), np.uint8))


def test_onnx_nets_match_the_keras_nets_of_the_mtcnn_package():
    pytest.importorskip("tensorflow")
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet

    from facesearch.embedder.detect.nets import load_weights

    det = Detector()
    rng = np.random.default_rng(0)
    for name, cls, shape, outputs in [("pnet", PNet, (2, 37, 53, 3), ["reg", "prob"]),  # any H, W
                                      ("rnet", RNet, (5, 24, 24, 3), ["reg", "prob"]),
                                      ("onet", ONet, (5, 48, 48, 3), ["reg", "landmarks", "prob"])]:
        net = cls()
        net.build()
        net.set_weights(load_weights(name))
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        want = [np.asarray(t) for t in net(x)]
        session = det._sessions[name]
        got = [dict(zip(session.outputs, session.run({"image": x})))[o] for o in outputs]
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, atol=2e-5, err_msg=name)


def test_crop_and_resize_matches_tensorflow():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (40, 50, 3)).astype(np.float32)
    boxes = np.array([[5.3, 7.1, 30.2, 33.9], [-6.0, -4.0, 20.0, 22.0], [30.0, 20.0, 61.5, 51.5]])
    normalised = boxes[:, [1, 0, 3, 2]] / [40, 50, 40, 50]
    want = tf.image.crop_and_resize(image[None], normalised, np.zeros(3, np.int32), (24, 24)).numpy()
    np.testing.assert_allclose(crop_and_resize(image, boxes, 24), want, atol=1e-5)


@needs_lfw
def test_detections_agree_with_the_mtcnn_package_on_lfw(detector):
    pytest.importorskip("tensorflow")
    from mtcnn import MTCNN

    reference = MTCNN()
    for name in PHOTOS:
        image = read_image(LFW_IMAGES / name)
        want = reference.detect_faces(image.astype(np.float32), output_type="numpy", box_format="xyxy")
        got = detector.detect_array(image)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got[:, 1:5], want[:, 1:5], atol=0.01, err_msg=name)  # boxes, px
        np.testing.assert_allclose(got[:, 6:], want[:, 6:], atol=0.01, err_msg=name)  # landmarks, px
        np.testing.assert_allclose(got[:, 5], want[:, 5], atol=1e-4, err_msg=name)


@needs_lfw
def test_one_face_per_lfw_photo_with_landmarks_in_place(detector):
    for name in PHOTOS[:3]:
        (face,) = [f for f in detector.detect(read_image(LFW_IMAGES / name)) if f.box[2] - f.box[0] > 60]
        x1, y1, x2, y2 = face.box
        assert 50 < (x1 + x2) / 2 < 200 and 50 < (y1 + y2) / 2 < 200  # LFW centres its subject
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
        assert lx < nx < rx and max(ly, ry) < ny < min(mly, mry) and mlx < mrx
        assert face.score > 0.9


@needs_lfw
def test_exif_rotated_photo_gives_the_upright_face(detector, tmp_path):
    upright = read_image(LFW_IMAGES / PHOTOS[0])
    # Stored rotated 90 degrees clockwise, with EXIF orientation 8 ("rotate 90 CW to view").
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = 8
    stored.save(tmp_path / "rotated.jpg", quality=98, exif=exif)
    (want,) = detector.detect(upright)
    (got,) = detector.detect(read_image(tmp_path / "rotated.jpg"))
    np.testing.assert_allclose(got.box, want.box, atol=3)
    np.testing.assert_allclose(got.landmarks, want.landmarks, atol=3)


@needs_lfw
def test_two_faces_side_by_side(detector):
    left, right = (read_image(LFW_IMAGES / name) for name in PHOTOS[:2])
    faces = detector.detect(np.concatenate([left, right], axis=1))
    big = sorted((f for f in faces if f.box[2] - f.box[0] > 60), key=lambda f: f.box[0])
    assert len(big) == 2
    assert big[0].box[2] < 250 < big[1].box[0]


@needs_lfw
def test_detector_is_thread_safe(detector):
    images = [read_image(LFW_IMAGES / name) for name in PHOTOS]
    want = [detector.detect_array(im) for im in images]
    got = [None] * 20

    def work(i):
        got[i] = detector.detect_array(images[i % len(images)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(got))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, want[i % len(images)])


def test_detection_never_imports_tensorflow(without_tensorflow):
    photo = LFW_IMAGES / PHOTOS[0]
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from pathlib import Path
        from facesearch.embedder.detect import Detector
        from facesearch.embedder.images import read_image
        image = read_image({str(photo)!r}) if Path({str(photo)!r}).is_file() else np.zeros((80, 80, 3), np.uint8)
        faces = Detector().detect(image)
        print("FACES", len(faces), sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "mtcnn")))
    """)
    out = without_tensorflow(script=script)
    assert out.returncode == 0, out.stderr
    expected = 1 if photo.is_file() else 0
    assert f"FACES {expected} []" in out.stdout, out.stdout


@needs_lfw
def test_a_photo_over_max_side_is_searched_smaller_and_answered_in_its_own_pixels(detector):
    small = read_image(LFW_IMAGES / PHOTOS[0])
    big = np.asarray(Image.fromarray(small).resize((2000, 2000), Image.Resampling.BILINEAR))
    (want,) = detector.detect(small)
    (got,) = detector.detect(big)  # searched at 1280 px (DetectorConfig.max_side)
    np.testing.assert_allclose(np.array(got.box) / 8, want.box, atol=4)  # another pyramid: near, not equal
    np.testing.assert_allclose(got.landmarks / 8, want.landmarks, atol=2)


@pytest.mark.parametrize("method", ["union", "min"])
def test_nms_in_blocks_gives_the_whole_matrix_answer_in_bounded_memory(method, monkeypatch):
    import tracemalloc

    import facesearch.embedder.detect.cascade as cascade

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 400, (3000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (3000, 2))], axis=1)
    whole = cascade.nms(boxes, 0.4, method)  # 3000 x 3000: one block
    monkeypatch.setattr(cascade, "NMS_BLOCK_CELLS", 3000 * 7)  # blocks of 7 columns, the last one short
    np.testing.assert_array_equal(cascade.nms(boxes, 0.4, method), whole)
    np.testing.assert_array_equal(whole[:40], [k for k in _reference_nms(boxes[:200], 0.4, method) if k < 200][:40])
    monkeypatch.undo()
    many = np.tile(boxes, (4, 1))[:12_000]  # a whole matrix would take 1.15 GB per float64 temporary
    tracemalloc.start()
    cascade.nms(many, 0.4, method)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_candidates_are_capped_best_first_and_an_ordinary_photo_is_unchanged(monkeypatch):
    """A photo tiled with tiny faces makes thousands of P-Net boxes; R-Net sees only the best max_candidates."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photo")
    astronaut = skimage_data.astronaut()
    face = np.asarray(Image.fromarray(astronaut[20:220, 140:320]).resize((40, 44)))
    tiled = np.tile(face, (24, 24, 1))  # 576 faces of ~40 px on 1056 x 960
    seen = []
    real = Detector._refine

    def counting(self, xs, boxes, net, size, finish):
        if net == "rnet":
            seen.append(sum(len(b) for b in boxes))
        return real(self, xs, boxes, net, size, finish)

    monkeypatch.setattr(Detector, "_refine", counting)
    capped = Detector(DetectorConfig(max_candidates=100)).detect(tiled)
    uncapped = Detector(DetectorConfig(max_candidates=None)).detect(tiled)
    assert seen[0] <= 100 < seen[1] and 0 < len(capped) <= 100 < len(uncapped)
    # The ordinary photo has far fewer candidates than the default cap: the same faces, to the bit.
    default, unlimited = Detector().detect(astronaut), Detector(DetectorConfig(max_candidates=None)).detect(astronaut)
    assert seen[2] == seen[3] < DetectorConfig().max_candidates
    assert [(d.box, d.score) for d in default] == [(d.box, d.score) for d in unlimited]
