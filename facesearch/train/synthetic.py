"""Deterministic synthetic "faces" (numpy + Pillow, no TensorFlow) for tests, demos and smoke runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# Per-sample nuisance, tuned so an untrained network's embeddings are far from perfect at
# pair verification while a ~20k-parameter MobileFaceNet learns the identities in seconds.
PROTOTYPE_WEIGHT = 0.6  # the rest of each image is a random smooth field of the same kind
MAX_SHIFT = 6  # pixels, in each direction
CONTRAST = (0.6, 1.4)
BRIGHTNESS = 40.0  # +- grey levels
PIXEL_NOISE = 30.0  # grey levels, standard deviation


def make_synthetic_faces(out_dir: str | os.PathLike, identities: int = 20, per_identity: int = 30,
                         size: tuple[int, int] = (112, 96), seed: int = 0, *, start: int = 0) -> list[Path]:
    """Write `out_dir/id_XX/NNN.png`: noisy, shifted, flipped views of one prototype per identity.

    Each identity is a fixed smooth random colour pattern; each sample mixes it with a random
    pattern of the same kind, then gets a random shift, horizontal flip, contrast, brightness
    and strong pixel noise. Sample `(identity, index)` depends only on `seed`, the identity and
    the index, so `start` gives further, disjoint samples of the same identities (e.g. held-out
    queries: `start=per_identity` of a gallery made earlier).

    Args:
        out_dir: folder to write into (created; existing files of the same names are replaced).
        identities: number of identities.
        per_identity: images written per identity.
        size: `(height, width)` of the images.
        seed: selects the prototypes and the samples.
        start: index of the first sample; files are named by index.

    Returns:
        The written paths, sorted.

    Raises:
        ValueError: non-positive counts or size, or a negative `start`.
    """
    height, width = size
    if min(identities, per_identity, height, width) < 1 or start < 0:
        raise ValueError(f"need positive counts and size and start >= 0, got {identities}, {per_identity}, "
                         f"{size}, {start}")
    out_dir = Path(out_dir)
    digits = max(2, len(str(identities - 1)))
    paths = []
    for identity in range(identities):
        prototype = _smooth_field(np.random.default_rng([seed, identity]), height, width)
        folder = out_dir / f"id_{identity:0{digits}d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(start, start + per_identity):
            rng = np.random.default_rng([seed, identity, index, 1])
            path = folder / f"{index:03d}.png"
            Image.fromarray(_sample(prototype, rng)).save(path)
            paths.append(path)
    return sorted(paths)


def _smooth_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """`(height, width, 3)` float32 in about [0, 255]: coarse + finer random colour blobs."""
    field = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((3, 0.6), (6, 0.4)):
        grid = rng.uniform(0, 255, size=(cells + 1, max(2, cells * width // height) + 1, 3)).astype(np.uint8)
        field += weight * np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32)
    return field


def _sample(prototype: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width, _ = prototype.shape
    x = PROTOTYPE_WEIGHT * prototype + (1 - PROTOTYPE_WEIGHT) * _smooth_field(rng, height, width)
    dy, dx = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=2)
    x = np.pad(x, ((MAX_SHIFT, MAX_SHIFT), (MAX_SHIFT, MAX_SHIFT), (0, 0)), mode="edge")
    x = x[MAX_SHIFT + dy:MAX_SHIFT + dy + height, MAX_SHIFT + dx:MAX_SHIFT + dx + width]
    if rng.random() < 0.5:
        x = x[:, ::-1]
    x = (x - 128.0) * rng.uniform(*CONTRAST) + 128.0 + rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    x = x + rng.normal(0.0, PIXEL_NOISE, size=x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
