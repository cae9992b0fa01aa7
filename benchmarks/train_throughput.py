"""Training throughput on this CPU: the tf.data input pipeline alone vs the training step alone.

    python benchmarks/train_throughput.py [--preset mobilefacenet] [--batch 64] [--steps 10]
                                          [--mixed-precision off|on|both]

The input pipeline must deliver images faster than the training step consumes them, or the
step waits on it. Both are timed apart, in images per second:

- input: `data.make_train_dataset` on a folder of PNGs (decode, resize, flip, normalise, batch),
  and `shards.make_shard_train_dataset` on the same images as per-identity TFRecords;
- step: `train_model.fit` on one batch held in memory (forward, ArcFace loss, backward, SGD),
  so no input cost is counted.

On a GPU, `--mixed-precision both` times the step in float32 and under `mixed_float16` (the
policy `facesearch train --mixed-precision on` uses), one after the other in the same process.

Data is generated (`facesearch.train.synthetic`, 112x96 PNGs) unless `--data` names a folder. Each figure is
the median of `--runs` timed passes after a warm-up pass (which pays tracing and Keras' compile).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def pipeline_rates(ds: tf.data.Dataset, batches: int, batch_size: int, runs: int) -> list[float]:
    """Images per second drawn from an endless batched dataset, one figure per run (after a warm-up)."""
    iterator = iter(ds)
    for _ in range(batches):
        next(iterator)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return rates


def step_rates(model: keras.Model, batch, steps: int, batch_size: int, runs: int) -> list[float]:
    """Images per second of `fit` on one in-memory batch repeated, one figure per run (after a warm-up)."""
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(ds, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mobilefacenet", help="facesearch.train.config preset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed run")
    parser.add_argument("--batches", type=int, default=20, help="input batches per timed run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--identities", type=int, default=40, help="generated identities (without --data)")
    parser.add_argument("--per-identity", type=int, default=16)
    parser.add_argument("--data", type=Path, default=None, help="a folder DATA/<identity>/*.png to read instead")
    parser.add_argument("--mixed-precision", choices=("off", "on", "both"), default="off",
                        help="time the training step in float32, under mixed_float16, or both")
    args = parser.parse_args(argv)

    from facesearch.train.config import get_preset
    from facesearch.train.data import make_train_dataset, scan_training_folder
    from facesearch.train.fit import compile_model
    from facesearch.train.models import build_views
    from facesearch.train.precision import precision_policy
    from facesearch.train.shards import load_shards, make_shard_train_dataset, write_shards
    from facesearch.train.synthetic import make_synthetic_faces

    config = dataclasses.replace(get_preset(args.preset), batch_size=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data
        if data_dir is None:
            data_dir = Path(tmp) / "faces"
            make_synthetic_faces(data_dir, args.identities, args.per_identity,
                                 size=(config.input_height, config.input_width))
        data = scan_training_folder(data_dir)
        write_shards(data, Path(tmp) / "shards", val_fraction=0.0)
        shards = load_shards(Path(tmp) / "shards")

        folder_ds = make_train_dataset(data, config)
        shard_ds = make_shard_train_dataset(shards, config)
        rates = {
            "input, folder of PNGs": pipeline_rates(folder_ds, args.batches, args.batch, args.runs),
            "input, TFRecord shards": pipeline_rates(shard_ds, args.batches, args.batch, args.runs),
        }
        batch = next(iter(folder_ds))
        steps = {"off": [False], "on": [True], "both": [False, True]}[args.mixed_precision]
        for mixed in steps:
            with precision_policy(mixed):  # layers take the policy when built; compile adds loss scaling
                model = build_views(config, data.num_classes).train_model
                compile_model(model, config)
                name = "training step, mixed" if mixed else "training step (no input)"
                rates[name] = step_rates(model, batch, args.steps, args.batch, args.runs)

    median = {k: statistics.median(v) for k, v in rates.items()}
    step_name = "training step (no input)" if "training step (no input)" in rates else "training step, mixed"
    step = median[step_name]
    print(f"{config.name} {config.input_height}x{config.input_width}, batch {args.batch}, "
          f"{data.num_classes} classes, {len(data.paths)} images, TF {tf.__version__}, "
          f"{os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}, median of {args.runs} runs")
    for k, v in rates.items():
        ratio = "" if k == step_name else f"   {median[k] / step:5.1f}x the step"
        print(f"  {k:26s} {median[k]:8.1f} img/s   (runs: {', '.join(f'{r:.1f}' for r in v)}){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
