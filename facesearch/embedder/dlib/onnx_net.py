"""dlib's face-recognition ResNet written straight into an ONNX graph with `onnx.helper`: no TensorFlow.

The same network as `facesearch.embedder.dlib.keras_net`, layer for layer (dlib's `anet_type`, from
tools/python/src/face_recognition.cpp; ../shared/notes/dlib-resnet.md), with the same contract as a
model that went through `facesearch.embedder.export`: input `image` (batch, 150, 150, 3) float32 RGB,
normalised outside the network as the model card says, (pixel - channel mean) / 256; output
`embedding` (batch, 128), dlib's descriptor (not unit length). Each `affine_` is folded into the
convolution before it, in float64 as keras_net does, so both graphs hold the same float32 weights.
Node, tensor and initializer names come from the network's structure: the same weights always give
the same bytes (and the same sha256 in the model card).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facesearch.embedder.core.constants import EMBEDDING_NAME, INPUT_NAME
from facesearch.embedder.core.errors import ModelSpecError
from facesearch.embedder.dlib.weights import LEVELS, STEM_FILTERS, DlibResnet, LayerCursor

OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17: readable by every onnxruntime facesearch supports


class _Graph:
    """NHWC `image` -> NCHW body, one named node per call; every tensor's static (C, H, W) is tracked."""

    def __init__(self, rows: int, cols: int):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, int, int]] = {}
        self.input = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", rows, cols, 3])
        self.x = self.op("Transpose", "to_nchw", [INPUT_NAME], (3, rows, cols), perm=[0, 3, 1, 2])

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, name: str, inputs: list[str], shape: tuple[int, int, int] | None, **attrs) -> str:
        """Append one node whose output tensor is named like the node; `shape` is its (C, H, W)."""
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        if shape is not None:
            self.shapes[name] = shape
        return name

    def conv_affine(self, x: str, layers: LayerCursor, filters: int, name: str) -> str:
        """dlib `affine<con<filters, k, k, s, s>>` as one Conv with the affine folded in."""
        kernel, bias, stride, pad = layers.take("con_4").conv()
        gamma, beta = layers.take("affine_").affine()
        if kernel.shape[-1] != filters or gamma.size != filters:
            raise ModelSpecError(f"{name}: the file has {kernel.shape[-1]} filters, the network {filters}")
        k = kernel.shape[0]
        folded = (kernel.astype(np.float64) * gamma).astype(np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        shift = (bias.astype(np.float64) * gamma + beta).astype(np.float32)
        _, h, w = self.shapes[x]
        out = (filters, 1 + (h + 2 * pad - k) // stride, 1 + (w + 2 * pad - k) // stride)
        return self.op("Conv", name, [x, self.const(f"{name}/kernel", folded), self.const(f"{name}/bias", shift)],
                       out, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)

    def pool(self, x: str, layers: LayerCursor, kind: str, name: str) -> str:
        size, _, stride, _, pad, _ = layers.take(kind).ints
        if pad:
            raise ModelSpecError(f"{name}: padded pooling is not supported")
        c, h, w = self.shapes[x]
        out = (c, 1 + (h - size) // stride, 1 + (w - size) // stride)
        op_type = "MaxPool" if kind == "max_pool_2" else "AveragePool"
        return self.op(op_type, name, [x], out, kernel_shape=[size, size], strides=[stride, stride])

    def relu(self, x: str, layers: LayerCursor, name: str) -> str:
        layers.take("relu_")
        return self.op("Relu", name, [x], self.shapes[x])

    def dlib_add(self, a: str, b: str, name: str) -> str:
        """dlib's `add_prev_`: tensors of different shapes are zero-padded at the end of each axis, then added.

        dlib takes the larger size in every dimension and treats missing entries as zero
        (dlib/cuda/cpu_dlib.cpp, `add`): a shortcut with fewer channels fills only the first ones,
        and a smaller map lands in the top-left corner of a larger one (level 1's 3x3 branch in 4x4).
        """
        target = tuple(max(p, q) for p, q in zip(self.shapes[a], self.shapes[b]))
        return self.op("Add", name, [self._pad_to(a, target, f"{name}_pad_a"),
                                     self._pad_to(b, target, f"{name}_pad_b")], target)

    def _pad_to(self, x: str, target: tuple[int, int, int], name: str) -> str:
        ends = [t - s for s, t in zip(self.shapes[x], target)]
        if not any(ends):
            return x
        pads = np.array([0, 0, 0, 0, 0, *ends], dtype=np.int64)  # NCHW begins, then ends
        return self.op("Pad", name, [x, self.const(f"{name}/pads", pads)], target)

    def model(self, output: str, size: int) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", size])
        graph = helper.make_graph(self.nodes, "dlib_resnet_v1", [self.input], [out], initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facesearch",
                                  doc_string="dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1)")
        model.ir_version = IR_VERSION
        return model


def _residual(g: _Graph, x: str, layers: LayerCursor, filters: int, down: bool, name: str) -> str:
    """dlib `ares<filters>` (down=False) or `ares_down<filters>` (down=True)."""
    y = g.relu(g.conv_affine(x, layers, filters, f"{name}_conv1"), layers, f"{name}_relu1")
    y = g.conv_affine(y, layers, filters, f"{name}_conv2")
    if down:
        x = g.pool(x, layers, "avg_pool_2", f"{name}_shortcut")
    layers.take("add_prev_")
    return g.relu(g.dlib_add(y, x, f"{name}_add"), layers, f"{name}_out")


def build_dlib_resnet_onnx(net: DlibResnet) -> onnx.ModelProto:
    """The ONNX model of dlib's face-recognition ResNet with the file's weights.

    Args:
        net: the parsed weight file (`facesearch.embedder.dlib.weights.read_dlib_resnet`).

    Returns:
        Model (opset 17) `image` (batch, 150, 150, 3) float32 RGB normalised as
        (pixel - net.mean_rgb) / 256 -> `embedding` (batch, 128) float32, dlib's descriptor (not unit
        length); byte for byte the same for the same weights. It passes `onnx.checker`.

    Raises:
        ModelSpecError: the file's layers do not follow dlib's `anet_type`.
    """
    layers = LayerCursor(net.layers)
    g = _Graph(*net.input_size)
    x = g.relu(g.conv_affine(g.x, layers, STEM_FILTERS, "stem_conv"), layers, "stem_relu")
    x = g.pool(x, layers, "max_pool_2", "stem_pool")
    for level, (filters, units, down) in enumerate(LEVELS):
        for unit in range(units):
            x = _residual(g, x, layers, filters, down and unit == 0, f"level{4 - level}_unit{unit}")
    if (size := layers.take("avg_pool_2").ints[0]) != 0:
        raise ModelSpecError(f"expected dlib's global average pool (size 0), found size {size}")
    channels = g.shapes[x][0]
    x = g.op("GlobalAveragePool", "global_pool", [x], (channels, 1, 1))
    x = g.op("Flatten", "flatten", [x], None, axis=1)
    outputs, inputs, bias_mode = (fc := layers.take("fc_2")).ints
    if bias_mode != 1:
        raise ModelSpecError(f"expected dlib's fc_no_bias (bias_mode 1), found bias_mode {bias_mode}")
    if inputs != channels:
        raise ModelSpecError(f"the final fc layer takes {inputs} inputs, the network gives it {channels}")
    if not layers.done():
        raise ModelSpecError("the dlib file has layers after the final fc layer")
    weights = g.const(f"{EMBEDDING_NAME}/kernel", fc.params.reshape(inputs, outputs))  # dlib stores it [in][out]
    model = g.model(g.op("MatMul", EMBEDDING_NAME, [x, weights], None), outputs)
    onnx.checker.check_model(model)
    return model
