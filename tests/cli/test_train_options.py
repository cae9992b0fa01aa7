"""`facesearch train` options: --list, --resume, --init-weights, and their errors."""

from __future__ import annotations

import json

from clitools import invoke, invoke_json

from train.synthetic import make_synthetic_faces


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
    _fails("train", tmp_path / "shards", "--out", tmp_path / "run2", "--preset", "tiny", "--batch-size", "5",
           match="batch_size must be even")
