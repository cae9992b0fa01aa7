"""MobileFaceNet: output shapes, GDC kernel, layer names, and the full-size parameter / MAC counts."""

import dataclasses

import keras
import numpy as np
import pytest

from facesearch.train.config import PRESETS
from facesearch.train.mobilefacenet import EMBEDDING_LAYER, IMAGE_INPUT, build_backbone

TINY = PRESETS["tiny"]


@pytest.mark.parametrize(("height", "width", "gdc"), [(112, 96, (7, 6)), (112, 112, (7, 7))])
def test_tiny_shapes_and_gdc_kernel(height, width, gdc):
    config = dataclasses.replace(TINY, input_height=height, input_width=width)
    model = build_backbone(config)
    images = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
    assert model.predict(images, verbose=0).shape == (2, 128)
    assert model.get_layer("head_gdc_dw").kernel_size == gdc
    assert model.get_layer("head_gdc_dw").input.shape[1:3] == gdc  # covers the whole final map
    assert model.get_layer(EMBEDDING_LAYER).output.shape == (None, 128)
    assert model.inputs[0].shape == (None, height, width, 3)
    assert model.get_layer(IMAGE_INPUT).output.dtype == "float32"


def count_multiply_adds(model: keras.Model) -> int:
    total = 0
    for layer in model.layers:
        out = layer.output.shape
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            total += out[1] * out[2] * int(np.prod(layer.kernel_size)) * out[3]
        elif isinstance(layer, keras.layers.Conv2D):
            total += out[1] * out[2] * int(np.prod(layer.kernel_size)) * layer.input.shape[-1] * out[3]
    return total


def test_full_size_model_matches_the_paper():
    model = build_backbone(PRESETS["mobilefacenet"])
    # Measured: 1,019,136 weights of which 999,552 trainable (the paper: 0.99M) and 189.4M
    # multiply-adds at 112x96 (BatchNorm moving statistics make up the difference).
    assert 0.9e6 < model.count_params() < 1.2e6
    assert model.count_params() == 1_019_136
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 999_552
    assert count_multiply_adds(model) == 189_408_256
    assert model.get_layer("head_gdc_dw").kernel_size == (7, 6)
    assert model.output_shape == (None, 128)
    # Residual shortcuts: 4 in the first stage (its first block downsamples), 6 and 2 later.
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 12


def test_full_size_112x112_gdc():
    model = build_backbone(PRESETS["mobilefacenet-112x112"])
    assert model.get_layer("head_gdc_dw").kernel_size == (7, 7)
    assert model.output_shape == (None, 128)


def test_prelu_slopes_are_per_channel_not_per_pixel():
    model = build_backbone(TINY)
    prelus = [layer for layer in model.layers if isinstance(layer, keras.layers.PReLU)]
    assert prelus
    for layer in prelus:
        assert layer.alpha.shape == (1, 1, layer.input.shape[-1])


def test_the_embedding_is_linear():
    # No activation after the GDC: the embedding can take negative values.
    model = build_backbone(TINY)
    embeddings = model.predict(np.random.default_rng(1).normal(size=(4, 112, 96, 3)), verbose=0)
    assert (embeddings < 0).any()
    after_gdc = [layer.name for layer in model.layers[-5:]]
    assert after_gdc == ["head_gdc_dw", "head_gdc_bn", "head_linear_conv", "head_linear_bn", EMBEDDING_LAYER]
