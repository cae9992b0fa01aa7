"""`facesearch train` options: --list, --resume, --init-weights, validation pairs, schedules, checkpoints, cache."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from clitools import invoke, invoke_json

from facesearch.train.synthetic import make_synthetic_faces


def _fails(*args, match):
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    # A list file's bad lines follow the `Error:` line, one per line.
    assert len(errors) == 1 and match in r.stderr, r.stderr


def test_list_file_then_resume_then_init_weights(tmp_path):
    paths = make_synthetic_faces(tmp_path / "images", identities=3, per_identity=4)
    lines = [f"{p.relative_to(tmp_path / 'images')} {p.parent.name}" for p in paths]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    common = ("--list", tmp_path / "list.txt", "--preset", "tiny", "--batch-size", "4", "--val-fraction", "0.25")

    first = invoke_json("train", tmp_path / "images", "--out", tmp_path / "run", *common, "--epochs", "1")
    assert (first["num_classes"], first["num_train_images"], first["optimizer_steps"]) == (3, 9, 3)

    resumed = invoke_json("train", tmp_path / "images", "--list", tmp_path / "list.txt",
                          "--resume", tmp_path / "run", "--epochs", "2")
    assert (resumed["initial_epoch"], resumed["optimizer_steps"]) == (1, 6)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 2
    _fails("train", tmp_path / "images", "--list", tmp_path / "list.txt", "--resume", tmp_path / "run",
           "--epochs", "3", "--batch-size", "8", match="batch_size: 4 -> 8")

    r = invoke("train", tmp_path / "images", "--out", tmp_path / "warm", *common, "--epochs", "1",
               "--init-weights", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "init weights:" in r.stdout and "left as built: none" in r.stdout  # same 3 classes: every layer fits


def test_train_errors(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "list.txt").write_text("a.jpg 0\nbroken\n")
    _fails("train", tmp_path / "images", "--list", tmp_path / "list.txt", "--out", tmp_path / "run",
           match="line 2: expected")
    _fails("train", tmp_path / "images", match="pass --out RUN_DIR for a new run, or --resume RUN_DIR")
    _fails("train", tmp_path / "images", "--resume", tmp_path / "nothing", match="no training config")


def test_prepare_shards_then_train_from_them(tmp_path):
    make_synthetic_faces(tmp_path / "images", identities=3, per_identity=5)
    (tmp_path / "images" / "id_02" / "bad.png").write_bytes(b"junk")
    r = invoke("prepare", tmp_path / "images", "--out", tmp_path / "shards", "--val-fraction", "0.2")
    assert r.exit_code == 0, r.output
    assert "wrote 3 shards (12 images of 3 identities) and 3 held-out images" in r.stdout
    assert f"unreadable: {tmp_path / 'images' / 'id_02' / 'bad.png'}" in r.stdout
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tfrecord")) == [
        "shard-00000.tfrecord", "shard-00001.tfrecord", "shard-00002.tfrecord", "val.tfrecord"]
    summary = invoke_json("train", tmp_path / "shards", "--out", tmp_path / "run", "--preset", "tiny",
                          "--epochs", "1", "--batch-size", "4")
    assert (summary["num_classes"], summary["num_train_images"], summary["optimizer_steps"]) == (3, 12, 3)
    resumed = invoke_json("train", tmp_path / "shards", "--resume", tmp_path / "run", "--epochs", "2")
    assert (resumed["initial_epoch"], resumed["optimizer_steps"]) == (1, 6)
    exported = invoke_json("export", tmp_path / "run", "--out", tmp_path / "model", "--no-savedmodel")
    assert exported["parity"]["onnx_min_cosine"] >= 0.9999 and (tmp_path / "model" / "model.onnx").is_file()
    _fails("train", tmp_path / "shards", "--out", tmp_path / "run3", "--preset", "tiny", "--cache",
           match="--cache is for folder and list-file input")
    _fails("train", tmp_path / "shards", "--out", tmp_path / "run2", "--preset", "tiny", "--batch-size", "5",
           match="batch_size must be even")


def test_new_flags_reach_config_json_and_a_resume_keeps_them(tmp_path):
    paths = make_synthetic_faces(tmp_path / "images", identities=3, per_identity=4)  # 12 images: 3 steps of 4
    for person in range(3):  # pair images laid out as LFW is, as png
        (tmp_path / "crops" / f"P{person}").mkdir(parents=True)
        for n, path in enumerate(p for p in paths if p.parent.name == f"id_{person:02d}"):
            shutil.copy(path, tmp_path / "crops" / f"P{person}" / f"P{person}_{n + 1:04d}.png")
    (tmp_path / "pairs.txt").write_text("2\nP0 1 2\nP1 3 4\nP0 1 P1 2\nP2 1 P0 3\n")  # pairsDevTest form
    flags = ("--val-pairs", tmp_path / "pairs.txt", "--val-root", tmp_path / "crops", "--lr-schedule", "step",
             "--lr-steps", "1", "--lr-factor", "0.5", "--checkpoint-every", "2", "--checkpoint-unit", "steps",
             "--keep-checkpoints", "1", "--mixed-precision", "off", "--cache")
    r = invoke("train", tmp_path / "images", "--out", tmp_path / "run", "--preset", "tiny", "--epochs", "1",
               "--batch-size", "4", "--val-fraction", "0", *flags)
    assert r.exit_code == 0, r.output
    assert f"pair verification on {tmp_path / 'pairs.txt'}: " in r.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: config[k] for k in ("val_pair_file", "val_image_root", "lr_schedule", "lr_steps", "lr_factor",
                                   "checkpoint_every", "checkpoint_unit", "keep_checkpoints",
                                   "mixed_precision", "cache")} == {
        "val_pair_file": str(tmp_path / "pairs.txt"), "val_image_root": str(tmp_path / "crops"),
        "lr_schedule": "step", "lr_steps": [1], "lr_factor": 0.5, "checkpoint_every": 2,
        "checkpoint_unit": "steps", "keep_checkpoints": 1, "mixed_precision": "off", "cache": "memory"}
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["epoch-000-batch-000002.keras"]

    # Only --epochs: the run's config.json brings back the pair file, the schedule and the checkpointing.
    resumed = invoke_json("train", tmp_path / "images", "--resume", tmp_path / "run", "--epochs", "2")
    assert (resumed["initial_step"], resumed["optimizer_steps"], resumed["val_pairs_from"]) == (
        2, 6, str(tmp_path / "pairs.txt"))
    with open(tmp_path / "run" / "log.csv") as f:
        assert [float(row["learning_rate"]) for row in csv.DictReader(f)] == pytest.approx([0.1, 0.05])
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["epoch-002.keras"]

    common = ("train", tmp_path / "images", "--out", tmp_path / "other", "--preset", "tiny")
    _fails(*common, "--val-pairs", tmp_path / "pairs.txt", match="--val-pairs FILE and --val-root DIR go together")
    _fails(*common, "--cache", "--cache-file", tmp_path / "c", match="not both")
    _fails(*common, "--lr-steps", "8,x", match="--lr-steps takes comma-separated epoch numbers")
    _fails(*common, "--lr-schedule", "cosine", match="lr_schedule must be one of plateau, step")
    (tmp_path / "crops" / "P2" / "P2_0001.png").unlink()
    _fails(*common, "--val-pairs", tmp_path / "pairs.txt", "--val-root", tmp_path / "crops",
           match="1 of 7 pair images are missing")
