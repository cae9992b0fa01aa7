"""Facts more than one package needs, defined once: file types, tensor names, pixel scaling, sizes."""

from __future__ import annotations

import os

# Photo files facesearch reads (Pillow decodes all of them); the training input pipeline decodes
# with TensorFlow and takes the subset it can decode (facesearch.train.data.TRAINING_EXTENSIONS).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# The embedding model's interface: its input tensor and the layer (and ONNX output) it is cut at.
INPUT_NAME = "image"
EMBEDDING_NAME = "embedding"

# Pixels reach facesearch's own models as (x - PIXEL_MEAN) / PIXEL_STD per channel, x in 0..255
# (SphereFace/ArcFace convention); other models say theirs in the model card.
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0

# The alignment template a model input size implies when nothing else says (a bare .keras file).
TEMPLATE_FOR_INPUT_SIZE = {(112, 96): "sphereface-112x96", (112, 112): "arcface-112x112"}

# Images per ONNX Runtime call. On a 2-core CPU, batches of 16 embedded a MobileFaceNet gallery
# faster than 32 or 64 (larger batches fall out of cache; benchmarks/build_index.py).
DEFAULT_BATCH_SIZE = 16


def reader_threads() -> int:
    """Threads that read and decode photos beside the embedding thread: min(4, CPU count)."""
    return min(4, os.cpu_count() or 1)


Box = tuple[float, float, float, float]  # a face's x1, y1, x2, y2 in its photo's pixels
