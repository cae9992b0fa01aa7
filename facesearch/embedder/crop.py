"""The crop a model sees for each detected face (its template's alignment, or dlib's own chip), and `detect`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from facesearch.embedder.align import DLIB_150, AlignmentTemplate, align_face
from facesearch.embedder.detect import Detection, Detector, DetectorConfig
from facesearch.embedder.detect.draw import draw_detections, save_image
from facesearch.embedder.images import read_image


def crop_face(image: np.ndarray, landmarks: np.ndarray, template: AlignmentTemplate) -> np.ndarray:
    """The crop a model aligned to `template` takes, for one face MTCNN found.

    For `dlib-150` (dlib's ResNet, the default model): dlib's own chip, cut from dlib's 5 points,
    which the ported dlib predictor finds in the rectangle dlib's detector would have drawn
    (facesearch.embedder.dlib.landmarks); on LFW this beats fitting MTCNN's points to the template (README,
    Measured). Other templates: the least-squares similarity of MTCNN's points onto the template.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        landmarks: (5, 2) MTCNN (x, y) (facesearch.embedder.detect order).

    Returns:
        (template.height, template.width, 3) uint8 RGB.
    """
    if template.name == DLIB_150.name:
        from facesearch.embedder.dlib.landmarks import align_dlib_face

        return align_dlib_face(image, landmarks)
    return align_face(image, landmarks, template)


def crop_faces(images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray],
               template: AlignmentTemplate) -> list[np.ndarray]:
    """`crop_face` of many faces, of one photo or of several: the same crops, made in one go.

    For `dlib-150`, dlib's predictor runs on every face at once (`align_dlib_faces`).

    Args:
        images: the (H, W, 3) uint8 RGB photo of each face (one array may serve several faces).
        landmarks: each face's (5, 2) MTCNN points.
    """
    if template.name == DLIB_150.name:
        from facesearch.embedder.dlib.landmarks import align_dlib_faces

        return align_dlib_faces(images, landmarks)
    return [align_face(image, points, template) for image, points in zip(images, landmarks)]


def write_crops(image: np.ndarray, detections: Sequence[Detection], template: AlignmentTemplate,
                folder: str | os.PathLike, stem: str = "face") -> list[Path]:
    """Write each face aligned to `template` as `folder/<stem>_<n>.png` (n from 1, best score first)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_image(Image.fromarray(crop_face(image, d.landmarks, template)), folder / f"{stem}_{n}.png")
            for n, d in enumerate(detections, 1)]


def detect_photo(path: str | os.PathLike, config: DetectorConfig, template: AlignmentTemplate, *,
                 annotated: str | os.PathLike | None = None, crops: str | os.PathLike | None = None) -> dict:
    """Every face of a photo (box, score, 5 landmarks); optionally drawn, and written as aligned crops.

    Args:
        path: the photo.
        config: detection options.
        template: the alignment the crops take (the model's; dlib-150 gives dlib's own chip).
        annotated: write the photo with the faces drawn here.
        crops: write each face's crop into this folder as `<stem>_<n>.png`.

    Returns:
        `facesearch detect --json`: image, width, height, template, faces, and what was written.

    Raises:
        ImageReadError: the photo cannot be read.
    """
    photo = read_image(path)
    detections = Detector(config).detect(photo)
    answer = {"image": str(path), "width": photo.shape[1], "height": photo.shape[0], "template": template.name,
              "faces": [{"box": [float(v) for v in d.box], "score": d.score,
                         "landmarks": [[float(x), float(y)] for x, y in d.landmarks]} for d in detections]}
    if annotated is not None:
        draw_detections(photo, detections, annotated)
        answer["annotated"] = str(annotated)
    if crops is not None:
        answer["crops"] = [str(p) for p in write_crops(photo, detections, template, crops, stem=Path(path).stem)]
    return answer
