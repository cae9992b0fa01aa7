"""MTCNN's three nets (P, R, O) as ONNX graphs built in memory from the `mtcnn` package's own weights.

The `mtcnn` package (MIT licence) ships its Keras weights as joblib/lz4 files under
`mtcnn/assets/weights/`. Importing `mtcnn` itself imports TensorFlow, so the files are located with
`importlib.util.find_spec` (which does not run the package) and read with joblib; the graphs are
written with `onnx.helper` once per machine into the user cache (`load_net`): building takes a few
milliseconds, but importing `onnx` and `joblib` for it costs a process ~1 s, so later processes
read the cached files instead. Nothing is downloaded and TensorFlow is never imported.

Layer-for-layer copies of `mtcnn/network/{pnet,rnet,onet}.py`: NHWC input, Keras "same" max pooling
(= ONNX SAME_UPPER), and Keras' `Permute((2, 1, 3))` before flattening in R-Net and O-Net.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from facesearch.embedder.core.derived import load_derived
from facesearch.embedder.core.errors import ModelSpecError

T = TypeVar("T")

WEIGHT_FILES = {"pnet": "pnet.lz4", "rnet": "rnet.lz4", "onet": "onet.lz4"}


def weights_dir() -> Path:
    """The folder holding the `mtcnn` package's weight files, found without importing the package.

    Raises:
        ModelSpecError: the `mtcnn` package is not installed or its weight files are missing.
    """
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError("face detection needs the `mtcnn` package (its weights): pip install mtcnn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"
    missing = [name for name in WEIGHT_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise ModelSpecError(f"the `mtcnn` package at '{folder.parent.parent}' lacks weight files {missing}: "
                             "reinstall it (pip install --force-reinstall mtcnn)")
    return folder


def load_weights(net: str) -> list[np.ndarray]:
    """The Keras weight list of one net ("pnet", "rnet" or "onet"), as float32 arrays."""
    import joblib  # the package stores its weights with joblib (lz4-compressed)

    arrays = joblib.load(weights_dir() / WEIGHT_FILES[net])
    return [np.asarray(a, dtype=np.float32) for a in arrays]


class _Graph:
    """A tiny builder: NHWC input -> NCHW body -> named outputs, one ONNX node per call."""

    def __init__(self, name: str, height: int | str, width: int | str):
        from onnx import TensorProto, helper

        self._helper, self._tp = helper, TensorProto
        self.name, self.nodes, self.inits, self._n = name, [], [], 0
        self.input = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", height, width, 3])
        self.x = self.op("Transpose", ["image"], perm=[0, 3, 1, 2])

    def const(self, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self._n += 1
        out = f"{op_type.lower()}{self._n}"
        self.nodes.append(self._helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, kernel: np.ndarray, bias: np.ndarray) -> str:
        # Keras HWIO -> ONNX OIHW; "valid" padding, stride 1 in every MTCNN conv.
        return self.op("Conv", [x, self.const(kernel.transpose(3, 2, 0, 1)), self.const(bias)])

    def prelu(self, x: str, alpha: np.ndarray) -> str:
        # Keras shared-axes alpha (1, 1, C) -> (C, 1, 1) broadcasting over NCHW; dense alpha (C,) stays.
        slope = alpha.reshape(-1, 1, 1) if alpha.ndim == 3 else alpha
        return self.op("PRelu", [x, self.const(slope)])

    def pool(self, x: str, size: int, same: bool) -> str:
        pad = {"auto_pad": "SAME_UPPER"} if same else {}
        return self.op("MaxPool", [x], kernel_shape=[size, size], strides=[2, 2], **pad)

    def dense(self, x: str, kernel: np.ndarray, bias: np.ndarray) -> str:
        return self.op("Gemm", [x, self.const(kernel), self.const(bias)])

    def flatten_whc(self, x: str) -> str:
        # Keras: Permute((2, 1, 3)) on NHWC then Flatten -> (W, H, C) order.
        return self.op("Flatten", [self.op("Transpose", [x], perm=[0, 3, 2, 1])], axis=1)

    def model(self, outputs: dict[str, str]) -> bytes:
        helper, tp = self._helper, self._tp
        for out_name, tensor in outputs.items():
            self.nodes.append(helper.make_node("Identity", [tensor], [out_name]))
        graph = helper.make_graph(self.nodes, self.name, [self.input],
                                  [helper.make_tensor_value_info(n, tp.FLOAT, None) for n in outputs],
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="facesearch")
        model.ir_version = 8
        return model.SerializeToString()


def build_pnet(w: list[np.ndarray]) -> bytes:
    """P-Net, fully convolutional: image (n, H, W, 3) -> reg (n, H', W', 4), prob (n, H', W', 2)."""
    g = _Graph("pnet", "height", "width")
    x = g.pool(g.prelu(g.conv(g.x, w[0], w[1]), w[2]), 2, same=True)
    x = g.prelu(g.conv(x, w[3], w[4]), w[5])
    x = g.prelu(g.conv(x, w[6], w[7]), w[8])
    reg = g.op("Transpose", [g.conv(x, w[9], w[10])], perm=[0, 2, 3, 1])
    prob = g.op("Transpose", [g.op("Softmax", [g.conv(x, w[11], w[12])], axis=1)], perm=[0, 2, 3, 1])
    return g.model({"reg": reg, "prob": prob})


def build_rnet(w: list[np.ndarray]) -> bytes:
    """R-Net: image (n, 24, 24, 3) -> reg (n, 4), prob (n, 2)."""
    g = _Graph("rnet", 24, 24)
    x = g.pool(g.prelu(g.conv(g.x, w[0], w[1]), w[2]), 3, same=True)
    x = g.pool(g.prelu(g.conv(x, w[3], w[4]), w[5]), 3, same=False)
    x = g.prelu(g.conv(x, w[6], w[7]), w[8])
    x = g.prelu(g.dense(g.flatten_whc(x), w[9], w[10]), w[11])
    return g.model({"reg": g.dense(x, w[12], w[13]), "prob": g.op("Softmax", [g.dense(x, w[14], w[15])], axis=1)})


def build_onet(w: list[np.ndarray]) -> bytes:
    """O-Net: image (n, 48, 48, 3) -> reg (n, 4), landmarks (n, 10) (x1..x5, y1..y5), prob (n, 2)."""
    g = _Graph("onet", 48, 48)
    x = g.pool(g.prelu(g.conv(g.x, w[0], w[1]), w[2]), 3, same=True)
    x = g.pool(g.prelu(g.conv(x, w[3], w[4]), w[5]), 3, same=False)
    x = g.pool(g.prelu(g.conv(x, w[6], w[7]), w[8]), 2, same=True)
    x = g.prelu(g.conv(x, w[9], w[10]), w[11])
    x = g.prelu(g.dense(g.flatten_whc(x), w[12], w[13]), w[14])
    return g.model({"reg": g.dense(x, w[15], w[16]), "landmarks": g.dense(x, w[17], w[18]),
                    "prob": g.op("Softmax", [g.dense(x, w[19], w[20])], axis=1)})


def build_resizer() -> bytes:
    """Separable linear resize: image (1, H, W, 3), wy (h, H), wxt (W, w) -> scaled (1, h, w, 3).

    Runs the pyramid's area resampling (`facesearch.embedder.detect.resize_area`) on ONNX Runtime's own
    single-threaded GEMM: numpy's multi-threaded BLAS slows to a crawl on a busy machine.
    """
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("MatMul", ["wy", "nchw"], ["rows"]),
             helper.make_node("MatMul", ["rows", "wxt"], ["both"]),
             helper.make_node("Transpose", ["both"], ["scaled"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("image", f, [1, "H", "W", 3]),
                                                helper.make_tensor_value_info("wy", f, ["h", "H"]),
                                                helper.make_tensor_value_info("wxt", f, ["W", "w"])],
                              [helper.make_tensor_value_info("scaled", f, [1, "h", "w", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="facesearch")
    model.ir_version = 8
    return model.SerializeToString()


BUILDERS = {"pnet": build_pnet, "rnet": build_rnet, "onet": build_onet}
NETS = ("resize", "pnet", "rnet", "onet")
# The graphs' format version: part of the cache key, so a change to the builders above (bump it)
# never meets a graph built by older code.
GRAPH_VERSION = 1


def build_net(net: str) -> bytes:
    """The serialized ONNX model of one net ("pnet", "rnet", "onet", or "resize"), from the package's weights."""
    if net == "resize":
        return build_resizer()
    return BUILDERS[net](load_weights(net))


def load_net(net: str, load: Callable[[bytes], T]) -> T:
    """`load(the serialized ONNX model of one net)`, the model built once per machine into the user cache.

    Building needs `onnx` and `joblib` (~1 s of imports); later processes read the cached file, keyed by
    the sha256 of the package's weight file (`facesearch.embedder.core.derived`). `load` (e.g. making an ONNX
    Runtime session) failing on a cached file rebuilds it.
    """
    if net == "resize":
        key = "no-weights"
    else:
        path = weights_dir() / WEIGHT_FILES[net]
        key = hashlib.sha256(path.read_bytes()).hexdigest()
    return load_derived(f"mtcnn-{net}-v{GRAPH_VERSION}", key, lambda: build_net(net), load, suffix=".onnx")
