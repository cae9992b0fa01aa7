"""TrainConfig: JSON round trip, presets, input-size validation; light modules stay TensorFlow-free."""

import dataclasses
import json
import subprocess
import sys

import pytest

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.train.config import PRESETS, TrainConfig, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(tmp_path, name):
    config = dataclasses.replace(PRESETS[name], seed=7, learning_rate=0.05)
    path = config.save(tmp_path / "config.json")
    assert TrainConfig.load(path) == config
    assert TrainConfig.load(tmp_path) == config  # a run folder holding config.json
    assert json.loads(path.read_text())["bottlenecks"] == [list(row) for row in config.bottlenecks]


def test_defaults_follow_the_paper():
    c = PRESETS["mobilefacenet"]
    assert (c.input_height, c.input_width, c.embedding_size) == (112, 96, 128)
    assert (c.arcface_scale, c.arcface_margin) == (32.0, 0.5)
    assert (c.learning_rate, c.momentum, c.weight_decay) == (0.1, 0.9, 4e-5)
    assert c.bottlenecks == ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


@pytest.mark.parametrize(("height", "width", "template", "gdc"), [
    (112, 96, "sphereface-112x96", (7, 6)),
    (112, 112, "arcface-112x112", (7, 7)),
    (128, 128, "none", (8, 8)),
])
def test_alignment_template_and_gdc_kernel(height, width, template, gdc):
    config = TrainConfig(input_height=height, input_width=width)
    assert config.alignment_template == template
    assert config.gdc_kernel == gdc


@pytest.mark.parametrize(("height", "width"), [(100, 96), (112, 90), (8, 96), (0, 96)])
def test_input_size_must_give_a_whole_gdc_map(height, width):
    with pytest.raises(ModelSpecError, match="multiple of the backbone's total stride 16"):
        TrainConfig(input_height=height, input_width=width)


def test_total_stride_comes_from_the_table():
    config = TrainConfig(bottlenecks=((2, 8, 1, 2), (2, 8, 1, 1)), input_height=36, input_width=28)
    assert config.total_stride == 4 and config.gdc_kernel == (9, 7)


@pytest.mark.parametrize("change", [
    {"arcface_margin": 2.0}, {"embedding_size": 0}, {"val_fraction": 1.0}, {"bottlenecks": ((2, 8, 1),)},
])
def test_invalid_values_raise(change):
    with pytest.raises(ModelSpecError):
        TrainConfig(**change)


def test_load_rejects_unknown_keys_and_missing_files(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TrainConfig().to_dict(), "dropout": 0.5}))
    with pytest.raises(ModelSpecError, match="unknown config keys \\['dropout'\\]"):
        TrainConfig.load(path)
    with pytest.raises(ModelSpecError, match="no training config"):
        TrainConfig.load(tmp_path / "missing.json")


def test_get_preset():
    assert get_preset("tiny") is PRESETS["tiny"]
    with pytest.raises(ModelSpecError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_light_modules_do_not_import_tensorflow():
    code = ("import sys, facesearch.train, facesearch.train.config, facesearch.embedder.evaluation.metrics, facesearch.train.synthetic; "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_config_of_an_older_version_loads_with_the_new_fields_defaulted(tmp_path):
    new_fields = {"lr_schedule", "lr_steps", "val_pair_file", "val_image_root", "checkpoint_every",
                  "checkpoint_unit", "keep_checkpoints", "mixed_precision", "cache"}
    old = {k: v for k, v in PRESETS["tiny"].to_dict().items() if k not in new_fields}
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = TrainConfig.load(tmp_path)
    assert loaded == PRESETS["tiny"]
    assert (loaded.lr_schedule, loaded.checkpoint_unit, loaded.mixed_precision, loaded.cache) == (
        "plateau", "epochs", "auto", "")


def test_new_fields_round_trip_and_are_checked(tmp_path):
    config = dataclasses.replace(PRESETS["tiny"], lr_schedule="step", lr_steps=(8, 14), checkpoint_every=500,
                                 checkpoint_unit="steps", keep_checkpoints=3, mixed_precision="on", cache="memory")
    assert TrainConfig.load(config.save(tmp_path / "config.json")) == config
    assert json.loads((tmp_path / "config.json").read_text())["lr_steps"] == [8, 14]
    for bad, message in [({"lr_schedule": "step"}, "needs lr_steps"),
                         ({"lr_steps": (14, 8)}, "increasing epoch numbers"),
                         ({"checkpoint_unit": "minutes"}, "checkpoint_unit must be one of epochs, steps"),
                         ({"mixed_precision": "yes"}, "mixed_precision must be one of auto, on, off"),
                         ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
                         ({"val_pair_file": "pairs.txt"}, "go together")]:
        with pytest.raises(ModelSpecError, match=message):
            dataclasses.replace(PRESETS["tiny"], **bad)
