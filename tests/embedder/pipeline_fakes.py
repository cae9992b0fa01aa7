"""Helpers of the photo-loop tests: real photos that anyone has, a tiny ONNX model, picklable face sources.

Worker processes are spawned: what they unpickle must be importable by module name, so the fakes
live here (tests/embedder is on sys.path, which spawned processes inherit), not in a test module.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from facesearch.embedder.core.errors import ImageReadError
from facesearch.embedder.core.model_card import ModelCard, sha256_file

SIZE, DIM = 8, 6


def write_linear_model(folder: Path, size: int, template: str, dim: int = 4) -> Path:
    """A linear (size x size x 3 -> dim) ONNX model whose card names `template` (no training, no TensorFlow)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((size * size * 3, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["embedding"])], "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(np.array([-1, size * size * 3], np.int64), "flat_shape"),
         numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    ModelCard(name=f"linear-{template}", input_height=size, input_width=size, embedding_size=dim,
              alignment_template=template, onnx_sha256=sha256_file(folder / "model.onnx")).save(folder)
    return folder


def real_gallery(root: Path) -> list[Path]:
    """<person>/<photo> files from scikit-image's public-domain photos, in forms users send, plus bad files.

    astronaut (one face) as PNG, JPEG, mirrored and enlarged to 2600 px (a JPEG the loop decodes at
    reduced scale for detection); the cameraman; photos without a person; an empty file and a
    truncated JPEG.
    """
    from skimage import data

    astronaut = data.astronaut()
    grey = data.camera()
    photos = {
        "collins/plain.png": astronaut,
        "collins/quality85.jpg": astronaut,
        "collins/mirrored.png": astronaut[:, ::-1],
        "collins/large.jpg": np.asarray(Image.fromarray(astronaut).resize((2600, 2600), Image.Resampling.BICUBIC)),
        "cameraman/camera.png": np.repeat(grey[..., None], 3, axis=2),
        "nobody/coffee.jpg": data.coffee(),
        "nobody/chelsea.png": data.chelsea(),
    }
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for rel, pixels in photos.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, quality=85) if path.suffix == ".jpg" \
            else Image.fromarray(np.ascontiguousarray(pixels)).save(path)
        paths.append(path)
    (root / "broken").mkdir()
    (root / "broken" / "empty.jpg").write_bytes(b"")
    (root / "broken" / "truncated.jpg").write_bytes((root / "collins" / "quality85.jpg").read_bytes()[:3000])
    paths += [root / "broken" / "empty.jpg", root / "broken" / "truncated.jpg"]
    return sorted(paths)


@dataclass
class FakeCrop:
    image: np.ndarray
    box: tuple[float, float, float, float] | None


class PicklableSource:
    """A face source without a lock or a session: it pickles, so the loop runs it in worker processes.

    faces(): the whole photo resized to SIZE x SIZE, one crop (a photo named `crash` kills the
    process; `slow` seconds of sleep per photo); embed(): a fixed random projection, L2-normalised.
    Each call to `faces` appends the process id to `log` (a file) when one is given.
    """

    def __init__(self, model_dir: Path, slow: float = 0.0, crash: str | None = None, log: Path | None = None):
        self.card = ModelCard(name="fake-picklable", input_height=SIZE, input_width=SIZE, embedding_size=DIM,
                              alignment_template="none")
        self.model_dir, self.crop_method = Path(model_dir), "fake-resize"
        self.slow, self.crash, self.log = slow, crash, log
        self.projection = np.random.default_rng(0).standard_normal((SIZE * SIZE * 3, DIM)).astype(np.float32)

    def faces(self, path: str | os.PathLike) -> list[FakeCrop]:
        path = Path(path)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()}\n")
        if self.crash is not None and path.name == self.crash:
            os._exit(3)  # as a segfault in a decoder would: no exception, no cleanup
        time.sleep(self.slow)
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB").resize((SIZE, SIZE)))
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageReadError(path, str(e)) from e
        return [FakeCrop(pixels, (0.0, 0.0, float(SIZE), float(SIZE)))]

    def embed(self, crops, batch_size: int = 32) -> np.ndarray:
        rows = [(np.asarray(c, np.float32).reshape(-1) / 255.0 - 0.5) @ self.projection for c in crops]
        v = np.stack(rows).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_photos(root: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` random PNG photos in root/p<k>/<i>.png, sorted."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = root / f"p{i % 5}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return sorted(paths)
