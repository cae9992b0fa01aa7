"""MobileFaceNet backbone (Chen et al. 2018, https://arxiv.org/abs/1804.07573) from small blocks."""

from __future__ import annotations

import keras
from keras import layers

from facesearch.embedder.core.constants import EMBEDDING_NAME, INPUT_NAME
from facesearch.train.config import TrainConfig

IMAGE_INPUT = INPUT_NAME  # the names export and the runtime rely on
EMBEDDING_LAYER = EMBEDDING_NAME

# PyTorch-style batch norm: with Keras' default momentum of 0.99 the moving statistics lag far
# behind the weights in short runs, and the inference view then embeds badly.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# insightface and the paper's Caffe model start PReLU slopes at 0.25 (Keras' default is 0).
PRELU_INIT = 0.25


def weight_decay_regularizer(weight_decay: float) -> keras.regularizers.Regularizer | None:
    """An L2 regularizer equivalent to coupled SGD weight decay `weight_decay`, or None for 0."""
    # Keras L2 adds wd * sum(w^2), whose gradient is 2 * wd * w; halve it so the gradient is
    # weight_decay * w, the coupled weight decay of Caffe / PyTorch SGD that the paper used.
    return keras.regularizers.L2(weight_decay / 2) if weight_decay > 0 else None


def _bn_act(x, name: str, linear: bool):
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if linear:
        return x
    # One slope per channel, shared over space: per-pixel slopes would tie the model to one input size.
    return layers.PReLU(
        alpha_initializer=keras.initializers.Constant(PRELU_INIT), shared_axes=[1, 2], name=f"{name}_prelu"
    )(x)


def conv_block(x, filters: int, kernel: int | tuple[int, int], strides: int, name: str, *,
               linear: bool = False, weight_decay: float = 0.0):
    """Conv (no bias) + BatchNorm (+ PReLU unless `linear`).

    Args:
        x: `(n, h, w, c)` tensor.
        filters: output channels.
        kernel: kernel size.
        strides: stride; padding is "same".
        name: prefix of the layer names.
        linear: leave out the PReLU.
        weight_decay: coupled L2 weight decay on the kernel.

    Returns:
        `(n, ceil(h / strides), ceil(w / strides), filters)` tensor.
    """
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_regularizer=weight_decay_regularizer(weight_decay), name=f"{name}_conv")(x)
    return _bn_act(x, name, linear)


def depthwise_block(x, kernel: int | tuple[int, int], strides: int, name: str, *,
                    padding: str = "same", linear: bool = False, weight_decay: float = 0.0):
    """Depthwise conv (no bias) + BatchNorm (+ PReLU unless `linear`).

    Args:
        x: `(n, h, w, c)` tensor.
        kernel: kernel size.
        strides: stride.
        name: prefix of the layer names.
        padding: "same" or "valid".
        linear: leave out the PReLU.
        weight_decay: coupled L2 weight decay on the kernel.

    Returns:
        `(n, h', w', c)` tensor.
    """
    x = layers.DepthwiseConv2D(kernel, strides=strides, padding=padding, use_bias=False,
                               depthwise_regularizer=weight_decay_regularizer(weight_decay), name=f"{name}_dw")(x)
    return _bn_act(x, name, linear)


def bottleneck(x, expansion: int, filters: int, strides: int, name: str, *, weight_decay: float = 0.0):
    """Inverted residual: 1x1 expand -> 3x3 depthwise -> linear 1x1 project (+ identity shortcut).

    Args:
        x: `(n, h, w, c)` tensor.
        expansion: expansion factor t; the depthwise conv runs on `t * c` channels.
        filters: output channels.
        strides: depthwise stride; the shortcut exists only for stride 1 and `filters == c`.
        name: prefix of the layer names.
        weight_decay: coupled L2 weight decay on the kernels.

    Returns:
        `(n, ceil(h / strides), ceil(w / strides), filters)` tensor.
    """
    channels = x.shape[-1]
    y = conv_block(x, expansion * channels, 1, 1, f"{name}_expand", weight_decay=weight_decay)
    y = depthwise_block(y, 3, strides, f"{name}_depthwise", weight_decay=weight_decay)
    y = conv_block(y, filters, 1, 1, f"{name}_project", linear=True, weight_decay=weight_decay)
    if strides == 1 and channels == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def gdc(x, embedding_size: int, name: str, *, weight_decay: float = 0.0, head_weight_decay: float = 0.0):
    """Global depthwise conv over the whole map, then a linear 1x1 conv to the embedding.

    Args:
        x: `(n, h, w, c)` tensor; the GDC kernel is `(h, w)`.
        embedding_size: output dimension d.
        name: prefix of the layer names.
        weight_decay: coupled L2 weight decay on the GDC kernel.
        head_weight_decay: the same on the 1x1 conv after it (the paper uses 4e-4 there).

    Returns:
        `(n, d)` tensor from the layer named `EMBEDDING_LAYER`.
    """
    x = depthwise_block(x, tuple(x.shape[1:3]), 1, f"{name}_gdc", padding="valid", linear=True,
                        weight_decay=weight_decay)
    x = conv_block(x, embedding_size, 1, 1, f"{name}_linear", linear=True, weight_decay=head_weight_decay)
    # float32 under any policy: a mixed-precision backbone still hands float32 embeddings on.
    return layers.Flatten(name=EMBEDDING_LAYER, dtype="float32")(x)


def mobilefacenet(image, config: TrainConfig):
    """Apply the MobileFaceNet layers to an image tensor.

    Args:
        image: `(n, input_height, input_width, 3)` float32 tensor, normalised `(x - 127.5) / 128`.
        config: backbone shape (`stem_channels`, `bottlenecks`, `expand_channels`, `embedding_size`).

    Returns:
        `(n, embedding_size)` tensor (not normalised), output of the layer named `EMBEDDING_LAYER`.
    """
    wd = config.weight_decay
    x = conv_block(image, config.stem_channels, 3, 2, "stem", weight_decay=wd)
    x = depthwise_block(x, 3, 1, "stem_depthwise", weight_decay=wd)
    for stage, (t, c, n, s) in enumerate(config.bottlenecks, start=1):
        for i in range(n):
            x = bottleneck(x, t, c, s if i == 0 else 1, f"stage{stage}_{i + 1}", weight_decay=wd)
    x = conv_block(x, config.expand_channels, 1, 1, "expand", weight_decay=wd)
    return gdc(x, config.embedding_size, "head", weight_decay=wd, head_weight_decay=config.head_weight_decay)


def build_backbone(config: TrainConfig) -> keras.Model:
    """The embedding model alone: input `image` `(n, H, W, 3)` -> `(n, embedding_size)`.

    Args:
        config: model shape; its input size has been validated to give a whole GDC map.

    Returns:
        An uncompiled functional model named after `config.name`.
    """
    image = keras.Input((config.input_height, config.input_width, 3), dtype="float32", name=IMAGE_INPUT)
    return keras.Model(image, mobilefacenet(image, config), name=config.name)
