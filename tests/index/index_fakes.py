"""Deterministic stand-ins for the embedder runtime, and small generated galleries, for index tests."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facesearch.embedder.core.errors import ImageReadError
from facesearch.embedder.core.model_card import ModelCard

SIZE = 8  # the fake model's input size (and the size of generated photos)


@dataclass
class FakeCrop:
    image: np.ndarray
    box: tuple[float, float, float, float] | None


class PixelEmbedder:
    """faces(): the whole photo (or the boxes in `boxes[file name]`) resized to SIZE x SIZE;
    embed(): a seeded random projection of the pixels, L2-normalised. Counts its calls."""

    def __init__(self, model_dir: Path, name: str = "fake-pixels", dim: int = 16, seed: int = 0,
                 boxes: dict[str, list[tuple[float, float, float, float]]] | None = None, onnx_sha256: str = "",
                 crop_method: str = "fake-resize"):
        self.card = ModelCard(name=name, input_height=SIZE, input_width=SIZE, embedding_size=dim,
                              alignment_template="none", onnx_sha256=onnx_sha256)
        self.model_dir = Path(model_dir)
        self.crop_method = crop_method
        self.boxes = boxes or {}
        self._proj = np.random.default_rng(seed).standard_normal((SIZE * SIZE * 3, dim)).astype(np.float32)
        self._lock = threading.Lock()
        self.read = Counter()  # file name -> faces() calls
        self.embed_calls = 0
        self.embedded = 0

    def faces(self, path: str | os.PathLike) -> list[FakeCrop]:
        path = Path(path)
        with self._lock:
            self.read[path.as_posix()] += 1
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageReadError(path, str(e)) from e
        if path.name not in self.boxes:
            return [FakeCrop(np.asarray(im.resize((SIZE, SIZE))), None)]
        return [FakeCrop(np.asarray(im.crop(tuple(int(v) for v in b)).resize((SIZE, SIZE))), tuple(map(float, b)))
                for b in self.boxes[path.name]]

    def embed(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        self.embed_calls += 1
        self.embedded += len(crops)
        return self._project([np.asarray(c, np.float32) for c in crops])

    def reference(self, paths: Sequence[Path]) -> np.ndarray:
        """(n, d) embeddings of whole photos, computed without touching the counters."""
        crops = []
        for p in paths:
            with Image.open(p) as im:
                crops.append(np.asarray(im.convert("RGB").resize((SIZE, SIZE)), np.float32))
        return self._project(crops)

    def _project(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        # Row by row, so that a photo's vector does not depend on the batch it was in (a matrix
        # product rounds differently with the batch size); the index tests can then be exact.
        rows = [(c.reshape(-1) / 255.0 - 0.5).astype(np.float32) @ self._proj for c in crops]
        v = np.stack(rows)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


class TableEmbedder(PixelEmbedder):
    """embed(): `table[key]`, where the photo's pixel (0, 0) encodes key as (key // 256, key % 256, 7).

    Lets a test choose the exact vector each photo gets (write photos with `write_photo(key=...)`).
    """

    def __init__(self, model_dir: Path, table: np.ndarray, name: str = "fake-table"):
        super().__init__(model_dir, name=name, dim=table.shape[1])
        self.table = np.asarray(table, np.float32)

    def embed(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        self.embed_calls += 1
        self.embedded += len(crops)
        keys = [int(c[0, 0, 0]) * 256 + int(c[0, 0, 1]) for c in crops]
        return self.table[keys].copy()


def write_photo(path: Path, rng: np.random.Generator, key: int | None = None, size: int = SIZE) -> Path:
    """A random lossless photo (PNG unless the suffix says otherwise); `key` goes into pixel (0, 0)."""
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if key is not None:
        pixels[0, 0] = (key // 256, key % 256, 7)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_gallery(root: Path, layout: dict[str, int], rng: np.random.Generator, ext: str = ".png") -> list[str]:
    """`root/<identity>/<i>.png` photos; returns their relative paths, sorted."""
    rels = []
    for identity, n in layout.items():
        for i in range(n):
            write_photo(root / identity / f"{i:03d}{ext}", rng)
            rels.append(f"{identity}/{i:03d}{ext}")
    return sorted(rels)


def bump_mtime(path: Path, seconds: int = 10) -> None:
    """Move a file's mtime forward so a rewrite is visible even on coarse-mtime file systems."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))
