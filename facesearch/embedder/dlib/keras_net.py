"""dlib's face-recognition ResNet (29 convolutions, 150x150 RGB -> 128-d) as a Keras model.

The graph is the network type of dlib's tools/python/src/face_recognition.cpp (`anet_type`); the
weights come from `facesearch.embedder.dlib.weights`. Each dlib `affine_` (batch norm, already folded by dlib
into a per-channel scale and shift) follows a convolution and is folded into that convolution's
kernel and bias here: the same function, one layer fewer per block. Inputs are normalised outside
the network, as the model card says: (pixel - channel mean) / 256, RGB.
"""

from __future__ import annotations

import keras
import numpy as np

from facesearch.embedder.core.constants import EMBEDDING_NAME, INPUT_NAME
from facesearch.embedder.core.errors import ModelSpecError
from facesearch.embedder.dlib.weights import LEVELS, STEM_FILTERS, DlibResnet, LayerCursor


@keras.saving.register_keras_serializable(package="facesearch")
class DlibAdd(keras.layers.Layer):
    """dlib's `add_prev_`: the sum of two NHWC tensors that may differ in height, width or channels.

    dlib adds tensors of different shapes by taking the larger size in every dimension and
    treating the missing entries as zero: a shortcut with fewer channels fills only the first
    ones, and a smaller map lands in the top-left corner of a larger one (dlib/cuda/cpu_dlib.cpp,
    `add`). Both inputs are zero-padded at the end of each axis to the larger size, then added.
    """

    def compute_output_shape(self, input_shapes):
        a, b = input_shapes
        return (a[0],) + tuple(max(x, y) for x, y in zip(a[1:], b[1:]))

    def call(self, inputs):
        a, b = inputs
        target = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]
        return _pad_to(a, target) + _pad_to(b, target)


def _pad_to(x, target: list[int]):
    pads = [[0, 0]] + [[0, t - s] for s, t in zip(x.shape[1:], target)]
    return keras.ops.pad(x, pads) if any(p for _, p in pads) else x


def _conv_affine(x, layers: LayerCursor, filters: int, name: str):
    """dlib `affine<con<filters, k, k, s, s>>` as one Conv2D with the affine folded in."""
    kernel, bias, stride, pad = layers.take("con_4").conv()
    gamma, beta = layers.take("affine_").affine()
    if kernel.shape[-1] != filters or gamma.size != filters:
        raise ModelSpecError(f"{name}: the file has {kernel.shape[-1]} filters, the network {filters}")
    k = kernel.shape[0]
    if stride == 1 and 2 * pad == k - 1:
        padding = "same"  # for odd k and stride 1, Keras pads exactly (k - 1) / 2 on each side
    else:
        padding = "valid"
        if pad:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    conv = keras.layers.Conv2D(filters, k, strides=stride, padding=padding, name=name)
    x = conv(x)
    conv.set_weights([(kernel.astype(np.float64) * gamma).astype(np.float32),
                      (bias.astype(np.float64) * gamma + beta).astype(np.float32)])
    return x


def _pool(x, layers: LayerCursor, kind: str, name: str):
    size, _, stride, _, pad, _ = layers.take(kind).ints
    if pad:
        raise ModelSpecError(f"{name}: padded pooling is not supported")
    pool = keras.layers.MaxPooling2D if kind == "max_pool_2" else keras.layers.AveragePooling2D
    return pool(size, strides=stride, padding="valid", name=name)(x)


def _residual(x, layers: LayerCursor, filters: int, down: bool, name: str):
    """dlib `ares<filters>` (down=False) or `ares_down<filters>` (down=True)."""
    y = _conv_affine(x, layers, filters, f"{name}_conv1")
    layers.take("relu_")
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv_affine(y, layers, filters, f"{name}_conv2")
    if down:
        x = _pool(x, layers, "avg_pool_2", f"{name}_shortcut")
    layers.take("add_prev_")
    y = DlibAdd(name=f"{name}_add")([y, x])
    layers.take("relu_")
    return keras.layers.ReLU(name=f"{name}_out")(y)


def build_dlib_resnet(net: DlibResnet) -> keras.Model:
    """The Keras model of dlib's face-recognition ResNet with the file's weights.

    Args:
        net: the parsed weight file (`facesearch.embedder.dlib.weights.read_dlib_resnet`).

    Returns:
        Model `image` (None, 150, 150, 3) float32 RGB normalised as (pixel - net.mean_rgb) / 256
        -> layer `embedding` (None, 128), dlib's descriptor (not unit length).

    Raises:
        ModelSpecError: the file's layers do not follow dlib's `anet_type`.
    """
    layers = LayerCursor(net.layers)
    rows, cols = net.input_size
    image = keras.Input((rows, cols, 3), name=INPUT_NAME)
    x = _conv_affine(image, layers, STEM_FILTERS, "stem_conv")
    layers.take("relu_")
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = _pool(x, layers, "max_pool_2", "stem_pool")
    for level, (filters, units, down) in enumerate(LEVELS):
        for unit in range(units):
            x = _residual(x, layers, filters, down and unit == 0, f"level{4 - level}_unit{unit}")
    size = layers.take("avg_pool_2").ints[0]
    if size != 0:
        raise ModelSpecError(f"expected dlib's global average pool (size 0), found size {size}")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    outputs, inputs, bias_mode = (fc := layers.take("fc_2")).ints
    if bias_mode != 1:
        raise ModelSpecError(f"expected dlib's fc_no_bias (bias_mode 1), found bias_mode {bias_mode}")
    dense = keras.layers.Dense(outputs, use_bias=False, name=EMBEDDING_NAME)
    x = dense(x)
    dense.set_weights([fc.params.reshape(inputs, outputs)])  # dlib stores it [in][out], as Keras
    if not layers.done():
        raise ModelSpecError("the dlib file has layers after the final fc layer")
    return keras.Model(image, x, name="dlib_resnet_v1")
