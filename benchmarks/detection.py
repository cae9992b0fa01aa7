"""Face detection on LFW: share of photos with a face, agreement with the `mtcnn` package, speed ratio.

    python benchmarks/detection.py [--lfw ../shared/lfw] [--reference 1000] [--limit N] [--seed 0]

1. Our detector (ONNX Runtime + numpy) + ArcFace alignment on every photo (or a seeded `--limit`
   subset): share of photos with at least one face.
2. On a seeded subset of `--reference` photos, interleaved photo by photo: the `mtcnn` package's
   TensorFlow `detect_faces` and ours, each followed by the same alignment, on the same decoded
   pixels. Reports faces found by both / only one, mean landmark distance (px) between matched
   faces, and the time ratio (theirs / ours, medians and totals). Both run single-threaded.
Prints JSON; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from facesearch.embedder.align import ARCFACE_112X112, align_face  # noqa: E402
from facesearch.embedder.detect import Detector  # noqa: E402
from facesearch.embedder.images import read_image  # noqa: E402


def lfw_photos(root: Path) -> list[Path]:
    folder = root / "images_deepfunneled"
    if not folder.is_dir():
        raise SystemExit(f"no LFW at '{folder}': pass --lfw or set FACESEARCH_LFW")
    return sorted(folder.glob("*/*.jpg"))


def detection_rate(detector: Detector, photos: list[Path]) -> dict:
    found, seconds, missed, start = 0, [], [], time.perf_counter()
    for n, path in enumerate(photos, 1):
        image = read_image(path)
        t = time.perf_counter()
        faces = detector.detect(image)
        for face in faces:
            align_face(image, face.landmarks, ARCFACE_112X112)
        seconds.append(time.perf_counter() - t)
        found += bool(faces)
        if not faces:
            missed.append(str(path.relative_to(path.parents[1])))
        if n % 1000 == 0:
            print(f"  {n}/{len(photos)} photos, {found} with a face, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
    return {"photos": len(photos), "with_face": found, "share_with_face": found / len(photos),
            "median_ms_per_photo": 1000 * float(np.median(seconds)), "missed": missed[:50]}


def _match(ours: np.ndarray, theirs: np.ndarray) -> list[tuple[int, int]]:
    # Pair each reference face with our face of nearest box centre (greedy, within half a box side).
    pairs, used = [], set()
    for j, t in enumerate(theirs):
        centre_t = (t[1:3] + t[3:5]) / 2
        dist = [np.linalg.norm((o[1:3] + o[3:5]) / 2 - centre_t) if i not in used else np.inf
                for i, o in enumerate(ours)]
        if dist and min(dist) < 0.5 * (t[3] - t[1]):
            i = int(np.argmin(dist))
            used.add(i)
            pairs.append((i, j))
    return pairs


def reference_agreement(detector: Detector, photos: list[Path]) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from mtcnn import MTCNN

    reference = MTCNN()
    warm = read_image(photos[0]).astype(np.float32)
    reference.detect_faces(warm)
    detector.detect(warm.astype(np.uint8))
    ours_s, theirs_s, landmark_px, box_px = [], [], [], []
    both = only_ours = only_theirs = 0
    for path in photos:
        image = read_image(path)
        t = time.perf_counter()
        theirs = reference.detect_faces(image.astype(np.float32), output_type="numpy", box_format="xyxy")
        for row in theirs:
            align_face(image, np.stack([row[6:11], row[11:16]], 1), ARCFACE_112X112)
        theirs_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        faces = detector.detect(image)
        for face in faces:
            align_face(image, face.landmarks, ARCFACE_112X112)
        ours_s.append(time.perf_counter() - t)
        ours = detector.detect_array(image)
        pairs = _match(ours, theirs)
        both += len(pairs)
        only_ours += len(ours) - len(pairs)
        only_theirs += len(theirs) - len(pairs)
        for i, j in pairs:
            a = np.stack([ours[i, 6:11], ours[i, 11:16]], 1)
            b = np.stack([theirs[j, 6:11], theirs[j, 11:16]], 1)
            landmark_px.append(np.linalg.norm(a - b, axis=1).mean())
            box_px.append(np.abs(ours[i, 1:5] - theirs[j, 1:5]).mean())
    ours_s, theirs_s = np.array(ours_s), np.array(theirs_s)
    return {
        "photos": len(photos), "faces_both": both, "faces_only_ours": only_ours, "faces_only_theirs": only_theirs,
        "landmark_mean_px": float(np.mean(landmark_px)) if landmark_px else None,
        "landmark_max_px": float(np.max(landmark_px)) if landmark_px else None,
        "box_mean_px": float(np.mean(box_px)) if box_px else None,
        "ours_median_ms": 1000 * float(np.median(ours_s)), "theirs_median_ms": 1000 * float(np.median(theirs_s)),
        "speedup_median": float(np.median(theirs_s) / np.median(ours_s)),
        "speedup_total": float(theirs_s.sum() / ours_s.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=Path(os.environ.get("FACESEARCH_LFW", "../shared/lfw")))
    parser.add_argument("--limit", type=int, default=0, help="detection rate on a seeded subset (0: all photos)")
    parser.add_argument("--reference", type=int, default=1000, help="photos compared with the mtcnn package")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    photos = lfw_photos(args.lfw)
    rng = np.random.default_rng(args.seed)
    detector = Detector(threads=1)
    result = {"lfw": str(args.lfw.resolve())}
    if args.reference:
        subset = [photos[i] for i in sorted(rng.choice(len(photos), min(args.reference, len(photos)), replace=False))]
        result["reference"] = reference_agreement(detector, subset)
        print(json.dumps(result["reference"], indent=2), file=sys.stderr)
    if args.limit >= 0:
        chosen = photos if not args.limit else [photos[i] for i in sorted(
            rng.choice(len(photos), min(args.limit, len(photos)), replace=False))]
        result["detection"] = detection_rate(detector, chosen)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
