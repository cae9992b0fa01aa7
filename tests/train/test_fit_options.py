"""Fit options: a pair file for validation, the step learning-rate schedule, mixed precision."""

import csv
import dataclasses
import json
import shutil

import keras
import numpy as np
import pytest

from facesearch.embedder.core.errors import DatasetError, ModelSpecError
from facesearch.embedder.evaluation.lfw import read_pairs
from facesearch.embedder.evaluation.metrics import pair_scores, verify_pairs
from facesearch.train.config import PRESETS
from facesearch.train.data import make_image_dataset
from facesearch.train.fit import train
from facesearch.train.models import embedding_view, load_checkpoint
from facesearch.train.precision import precision_policy
from facesearch.train.synthetic import make_synthetic_faces

CONFIG = dataclasses.replace(PRESETS["tiny"], epochs=3, batch_size=8, val_fraction=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """`(train_dir, pairs_file, crops_dir)`: 4 identities x 6 training images; an LFW-style pair set of others."""
    root = tmp_path_factory.mktemp("options")
    make_synthetic_faces(root / "train", identities=4, per_identity=6)
    extra = make_synthetic_faces(root / "extra", identities=4, per_identity=3, start=6)
    for path in extra:  # LFW's layout: <name>/<name>_0001.png
        name, number = f"P{path.parent.name[-1]}", sorted(path.parent.iterdir()).index(path) + 1
        (root / "crops" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "crops" / name / f"{name}_{number:04d}.png")
    # The 10-fold header form: 10 sets of 1 matched + 1 mismatched pair.
    lines = ["10\t1"] + [line for k in range(10) for line in (f"P{k % 4}\t1\t{2 + k % 2}",
                                                              f"P{k % 4}\t{1 + k % 3}\tP{(k + 1) % 4}\t2")]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root / "train", root / "pairs.txt", root / "crops"


def test_pair_file_validation_and_step_schedule(data, tmp_path):
    train_dir, pairs_file, crops = data
    config = dataclasses.replace(CONFIG, val_pair_file=str(pairs_file), val_image_root=str(crops),
                                 lr_schedule="step", lr_steps=(1, 2), lr_factor=0.5)
    result = train(train_dir, tmp_path / "run", config, verbose=0)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["lr_schedule"], saved["lr_steps"], saved["val_pair_file"]) == ("step", [1, 2], str(pairs_file))

    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], [0.1, 0.05, 0.025], rtol=1e-6)
    # The logged figures are the pair file's, with its own 10 folds, on the final weights.
    pair_list = read_pairs(pairs_file)
    paths = [str(crops / p).replace(".jpg", ".png") for p in pair_list.images]
    embeddings = embedding_view(load_checkpoint(tmp_path / "run")).predict(make_image_dataset(paths, config),
                                                                           verbose=0)
    want = verify_pairs(pair_scores(embeddings[pair_list.pairs[:, 0]], embeddings[pair_list.pairs[:, 1]]),
                        pair_list.same, pair_list.folds, far_targets=())
    assert result.val_pairs_from == str(pairs_file)
    assert float(rows[-1]["val_pair_acc"]) == pytest.approx(want.accuracy, abs=1e-6)
    assert float(rows[-1]["val_pair_threshold"]) == pytest.approx(want.threshold, abs=1e-4)
    assert float(rows[-1]["val_pair_auc"]) == pytest.approx(want.auc, abs=1e-6)


def test_missing_pair_images_fail_before_training(data, tmp_path):
    train_dir, pairs_file, crops = data
    shutil.copytree(crops, tmp_path / "crops")
    (tmp_path / "crops" / "P1" / "P1_0002.png").unlink()
    config = dataclasses.replace(CONFIG, val_pair_file=str(pairs_file), val_image_root=str(tmp_path / "crops"))
    with pytest.raises(DatasetError, match=r"pair images are missing .*P1/P1_0002.jpg"):
        train(train_dir, tmp_path / "run", config, verbose=0)
    assert not (tmp_path / "run").exists()


def test_mixed_precision_trains_in_float16_and_saves_float32_weights(data, tmp_path):
    train_dir, _, _ = data
    before = keras.mixed_precision.global_policy().name
    # lr 0.01: at 0.1 the loss of 24 images climbs for the first epochs in float32 too (measured).
    # 8 epochs: after 4 the loss had not yet fallen on some seeds and thread counts (measured); one
    # checkpoint, the last, as the only one read below.
    mixed = dataclasses.replace(CONFIG, epochs=8, learning_rate=0.01, mixed_precision="on", checkpoint_every=8)
    result = train(train_dir, tmp_path / "run", mixed, verbose=0)
    assert keras.mixed_precision.global_policy().name == before == "float32"  # restored, no leak
    assert result.mixed_precision
    losses = result.history["loss"]
    # Measured on seeds 0-3, oneDNN on and off, 1 and 2 threads: the last epoch's loss is 0.07-0.59 of
    # the first's; 0.91-1.03 when the weights barely move (learning rate 1e-6).
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.75 * losses[0]

    checkpoint = tmp_path / "run" / "checkpoints" / "epoch-008.keras"
    with precision_policy(True):
        saved = load_checkpoint(checkpoint, as_saved=True)
    assert saved.get_layer("stem_conv").compute_dtype == "float16"  # the backbone computed in float16
    assert {saved.get_layer(n).compute_dtype for n in ("embedding", "arcface", "probabilities")} == {"float32"}
    assert {v.dtype for v in saved.weights} == {"float32"}
    # Its optimizer state came back: dynamic loss scaling skips the first steps, whose float16
    # gradients overflow at the initial scale 2**15 while it halves, so fewer than 8 x 3 updates count
    # (measured: 3 or 4 skipped; none when no gradient reaches the float16 backbone).
    assert type(saved.optimizer).__name__ == "LossScaleOptimizer"
    assert 0 < int(saved.optimizer.iterations) == result.optimizer_steps < 24

    # Loaded for inference / export: a float32 model with the same weights, float32 embeddings.
    plain = load_checkpoint(tmp_path / "run")
    assert {layer.compute_dtype for layer in plain.layers if layer.weights} == {"float32"}
    images = next(iter(make_image_dataset([str(p) for p in sorted(train_dir.glob("*/*.png"))[:8]], CONFIG)))
    want = embedding_view(saved)(images).numpy()
    got = embedding_view(plain)(images).numpy()
    assert got.dtype == np.float32
    cosine = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.999

    # A mixed run resumes mixed ("auto" follows the checkpoint, even without a GPU), never in float32.
    with pytest.raises(ModelSpecError, match="trained with mixed precision on"):
        train(train_dir, tmp_path / "run", dataclasses.replace(mixed, epochs=9, mixed_precision="off"),
              resume=True, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"
