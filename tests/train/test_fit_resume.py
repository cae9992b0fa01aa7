"""Resuming a run from its checkpoint, and starting one from pretrained weights by layer name."""

import csv
import dataclasses
import shutil

import keras
import numpy as np
import pytest

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.train.config import PRESETS
from facesearch.train.fit import train
from facesearch.train.models import build_views, load_checkpoint

CONFIG = dataclasses.replace(PRESETS["tiny"], epochs=2, batch_size=8, val_fraction=0.0)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from facesearch.train.synthetic import make_synthetic_faces

    root = tmp_path_factory.mktemp("small")
    make_synthetic_faces(root, identities=4, per_identity=6)  # 24 images, 3 steps per epoch
    return root


def test_resume_continues_steps_epochs_and_the_same_run(small_data, tmp_path):
    one = dataclasses.replace(CONFIG, epochs=1)
    first = train(small_data, tmp_path / "run", one, verbose=0)
    assert (first.initial_epoch, first.optimizer_steps) == (0, 3)
    with pytest.raises(ModelSpecError, match="already trained 1 of 1 epochs"):
        train(small_data, tmp_path / "run", one, resume=True, verbose=0)
    with pytest.raises(ModelSpecError, match=r"different config \(batch_size: 8 -> 4\)"):
        train(small_data, tmp_path / "run", dataclasses.replace(CONFIG, batch_size=4), resume=True, verbose=0)

    resumed = train(small_data, tmp_path / "run", CONFIG, resume=True, verbose=0)
    assert (resumed.initial_epoch, resumed.optimizer_steps) == (1, 6)
    assert len(resumed.history["loss"]) == 1
    with open(tmp_path / "run" / "log.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]

    # An uninterrupted two-epoch run ends with the same weights: optimizer state and input stream carried over.
    straight = train(small_data, tmp_path / "straight", CONFIG, verbose=0)
    assert straight.optimizer_steps == 6
    for a, b in zip(load_checkpoint(tmp_path / "run").get_weights(),
                    load_checkpoint(tmp_path / "straight").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_resume_needs_a_checkpoint(small_data, tmp_path):
    from facesearch.embedder.core.errors import DatasetError
    from facesearch.train.data import save_labels

    CONFIG.save(tmp_path)
    save_labels(tmp_path / "labels.json", ["id_00", "id_01", "id_02", "id_03"])
    with pytest.raises(ModelSpecError, match="nothing to resume"):
        train(small_data, tmp_path, CONFIG, resume=True, verbose=0)
    save_labels(tmp_path / "labels.json", ["someone", "else"])
    with pytest.raises(DatasetError, match="identities differ from its labels.json"):
        train(small_data, tmp_path, CONFIG, resume=True, verbose=0)


def test_init_weights_by_layer_name_skips_a_mismatched_head(small_data, tmp_path):
    keras.utils.set_random_seed(123)
    source = build_views(CONFIG, num_classes=7).train_model  # 7 classes: the ArcFace kernel differs
    source.save(tmp_path / "pretrained.keras")
    one = dataclasses.replace(CONFIG, epochs=1, learning_rate=1e-9)  # a step that barely moves the weights
    result = train(small_data, tmp_path / "run", one, init_weights=tmp_path / "pretrained.keras", verbose=0)
    assert result.skipped_layers == ("arcface",)
    assert {"stem_conv", "head_linear_conv", "head_linear_bn"} <= set(result.loaded_layers)
    trained = load_checkpoint(tmp_path / "run")
    # Trainable weights only: BatchNorm's moving statistics move in the one epoch whatever the rate.
    for name in result.loaded_layers:
        for a, b in zip(trained.get_layer(name).trainable_weights, source.get_layer(name).trainable_weights):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, err_msg=name)
    assert trained.get_layer("arcface").get_weights()[0].shape[-1] == 4
    with pytest.raises(ModelSpecError, match="cannot take --init-weights"):
        train(small_data, tmp_path / "run", CONFIG, resume=True, init_weights=tmp_path / "pretrained.keras",
              verbose=0)


def test_resume_from_a_mid_epoch_step_checkpoint_matches_an_uninterrupted_run(small_data, tmp_path):
    # 24 images, batch 8: 3 steps an epoch; a checkpoint every 2 steps falls mid-epoch at steps 2 and 4.
    steps = dataclasses.replace(CONFIG, checkpoint_every=2, checkpoint_unit="steps")
    straight = train(small_data, tmp_path / "straight", steps, verbose=0)
    assert straight.optimizer_steps == 6
    assert sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir()) == [
        "epoch-000-batch-000002.keras", "epoch-001-batch-000001.keras", "epoch-002.keras"]

    # As if killed after step 2: only its checkpoint is left. Resume there, finish epoch 1 (1 batch), train epoch 2.
    shutil.copytree(tmp_path / "straight", tmp_path / "run")
    for name in ("model.keras", "checkpoints/epoch-001-batch-000001.keras", "checkpoints/epoch-002.keras"):
        (tmp_path / "run" / name).unlink()
    resumed = train(small_data, tmp_path / "run", dataclasses.replace(steps, keep_checkpoints=2), resume=True,
                    verbose=0)
    assert (resumed.initial_epoch, resumed.initial_step, resumed.optimizer_steps) == (0, 2, 6)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch-001-batch-000001.keras", "epoch-002.keras"]  # keep_checkpoints=2 deleted step 2's
    with open(tmp_path / "run" / "log.csv") as f:  # the rows of the redone epochs are replaced, not repeated
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    for a, b in zip(load_checkpoint(tmp_path / "run").get_weights(),
                    load_checkpoint(tmp_path / "straight").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The step checkpoint itself holds the optimizer state of step 4.
    assert int(load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch-001-batch-000001.keras")
               .optimizer.iterations) == 4
