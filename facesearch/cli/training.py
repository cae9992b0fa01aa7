"""`facesearch train`, `prepare` and `export`: the TensorFlow side, imported only by these commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli.options import JsonOpt, emit, friendly_errors


@friendly_errors
def train(
    data: Annotated[Path, typer.Argument(help="Training folder DATA/<identity>/*.jpg; with --list, the image root its paths start from; or a shard folder from `facesearch prepare`.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder: checkpoints, config, logs.")] = None,
    list_file: Annotated[Optional[Path], typer.Option("--list", help="List file of 'relative/path.jpg label' lines (CASIA-WebFace-112X96.txt style) under DATA.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Run folder to continue from its latest checkpoint, with its config.json (--epochs may raise the total).")] = None,
    init_weights: Annotated[Optional[Path], typer.Option("--init-weights", help="A .keras model or run folder: load its weights by layer name, skipping layers of other shapes.")] = None,
    preset: Annotated[str, typer.Option(help="Model/training preset: mobilefacenet or tiny.")] = "mobilefacenet",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default from the preset).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default from the preset).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="HxW model input: 112x96 or 112x112.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option(help="Share of each identity held out for pair verification, seeded (default from the preset; the seed used 0.05).")] = None,
    val_pairs: Annotated[Optional[Path], typer.Option("--val-pairs", help="LFW-format pair file (pairs.txt, pairsDevTest.txt) to verify at each epoch end instead of held-out images; needs --val-root.")] = None,
    val_root: Annotated[Optional[Path], typer.Option("--val-root", help="Aligned crops of the --val-pairs images: DIR/<name>/<name>_0001.jpg|png.")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help="plateau: cut the rate by --lr-factor when val_pair_acc stalls; step: cut it at each of --lr-steps (default plateau).")] = None,
    lr_steps: Annotated[Optional[str], typer.Option("--lr-steps", help="Epochs after which the step schedule cuts the rate, e.g. 8,14.")] = None,
    lr_factor: Annotated[Optional[float], typer.Option("--lr-factor", help="Multiplier of each cut (default 0.1).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option("--checkpoint-every", min=1, help="Save a resumable checkpoint every N --checkpoint-unit (default 1 epoch).")] = None,
    checkpoint_unit: Annotated[Optional[str], typer.Option("--checkpoint-unit", help="epochs or steps (optimizer steps, i.e. batches).")] = None,
    keep_checkpoints: Annotated[Optional[int], typer.Option("--keep-checkpoints", min=0, help="Keep only the latest K checkpoints (default 0: keep all).")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option("--mixed-precision", help="auto (on when TensorFlow sees a GPU), on or off: float16 backbone, float32 head, loss and weights.")] = None,
    cache: Annotated[Optional[bool], typer.Option("--cache/--no-cache", help="Keep the decoded, resized training images in memory after the first epoch (folder and list input).")] = None,
    cache_file: Annotated[Optional[Path], typer.Option("--cache-file", help="Keep them in this file instead (reused by later runs: delete it when the data changes).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    json_out: JsonOpt = False,
):
    """Train MobileFaceNet + ArcFace on a folder of aligned face crops, a list file or shards."""
    options = TrainOptions(val_fraction=val_fraction, val_pairs=val_pairs, val_root=val_root,
                           lr_schedule=lr_schedule, lr_steps=lr_steps, lr_factor=lr_factor,
                           checkpoint_every=checkpoint_every, checkpoint_unit=checkpoint_unit,
                           keep_checkpoints=keep_checkpoints, mixed_precision=mixed_precision,
                           cache=cache, cache_file=cache_file)
    result = run_train(data, out, preset=preset, epochs=epochs, batch_size=batch_size,
                       input_size=input_size, seed=seed, list_file=list_file, resume=resume,
                       init_weights=init_weights, options=options)
    from facesearch.cli.output import format_train

    emit(result, json_out, format_train)


# A top-level `prepare`, not `train prepare`: `train` takes DATA as its first argument, and a Click
# group cannot tell `train prepare X` from `train DATA` without guessing, so `facesearch train DATA`
# stays a plain command and its input step is a sibling.
@friendly_errors
def prepare(
    data: Annotated[Path, typer.Argument(help="Training folder DATA/<identity>/*.jpg; with --list, the image root.")],
    out: Annotated[Path, typer.Option("--out", help="Shard folder to write: one TFRecord per identity, val.tfrecord, shards.json.")],
    list_file: Annotated[Optional[Path], typer.Option("--list", help="List file of 'relative/path.jpg label' lines under DATA.")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.99, help="Share of each identity held out for pair verification, seeded.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the hold-out choice.")] = 0,
    json_out: JsonOpt = False,
):
    """Write per-identity TFRecord shards for `facesearch train SHARDS --out RUN` (pairs of one identity per batch)."""
    result = run_prepare(data, out, list_file=list_file, val_fraction=val_fraction, seed=seed,
                         progress=not json_out)
    from facesearch.cli.output import format_prepare

    emit(result, json_out, format_prepare)


@friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder from `facesearch train`, or its .keras checkpoint.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Write model.onnx (needed by build-index/query).")] = True,
    savedmodel: Annotated[bool, typer.Option("--savedmodel/--no-savedmodel", help="Write a TensorFlow SavedModel.")] = True,
    fuse_prelu: Annotated[bool, typer.Option(help="Write each PReLU as one ONNX PRelu node (slower in ONNX Runtime 1.32 on CPU; see README).")] = False,
    json_out: JsonOpt = False,
):
    """Truncate a trained model to its embedding layer and export it, proving numeric parity."""
    result = run_export(checkpoint, out, onnx=onnx, savedmodel=savedmodel, fuse_prelu=fuse_prelu)
    from facesearch.cli.output import format_export

    emit(result, json_out, format_export)



@dataclass(frozen=True)
class TrainOptions:
    """`facesearch train` flags that override config fields; None leaves the preset's (or the resumed run's)."""

    val_fraction: float | None = None
    val_pairs: Path | None = None
    val_root: Path | None = None
    lr_schedule: str | None = None
    lr_steps: str | None = None
    lr_factor: float | None = None
    checkpoint_every: int | None = None
    checkpoint_unit: str | None = None
    keep_checkpoints: int | None = None
    mixed_precision: str | None = None
    cache: bool | None = None
    cache_file: Path | None = None

    def overrides(self) -> dict:
        """The `TrainConfig` fields these flags set (paths made absolute: a resume may run elsewhere)."""
        from facesearch.embedder.core.errors import FaceSearchError

        if self.cache and self.cache_file is not None:
            raise FaceSearchError("pass --cache (in memory) or --cache-file PATH, not both")
        fields = {"val_fraction": self.val_fraction, "lr_schedule": self.lr_schedule, "lr_factor": self.lr_factor,
                  "checkpoint_every": self.checkpoint_every, "checkpoint_unit": self.checkpoint_unit,
                  "keep_checkpoints": self.keep_checkpoints, "mixed_precision": self.mixed_precision}
        if self.val_pairs is not None or self.val_root is not None:
            if self.val_pairs is None or self.val_root is None:
                raise FaceSearchError("--val-pairs FILE and --val-root DIR go together: pass both")
            fields["val_pair_file"] = str(self.val_pairs.resolve())
            fields["val_image_root"] = str(self.val_root.resolve())
        if self.lr_steps is not None:
            fields["lr_steps"] = _parse_epochs(self.lr_steps)
        if self.cache is not None:
            fields["cache"] = "memory" if self.cache else ""
        if self.cache_file is not None:
            fields["cache"] = str(self.cache_file.resolve())
        return {k: v for k, v in fields.items() if v is not None}


def _parse_epochs(text: str) -> tuple[int, ...]:
    from facesearch.embedder.core.errors import FaceSearchError

    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise FaceSearchError(f"--lr-steps takes comma-separated epoch numbers such as 8,14; got '{text}'") from None


def run_train(data: Path, out: Path | None, *, preset: str, epochs: int | None, batch_size: int | None,
              input_size: str | None, seed: int | None, list_file: Path | None = None,
              resume: Path | None = None, init_weights: Path | None = None,
              options: TrainOptions = TrainOptions()) -> dict:
    """Train a preset on a folder, list-file or shard dataset, with CLI flags overriding the preset.

    With `resume`, the run folder's own config.json is the base instead of the preset; flags
    that change what `facesearch.train.config.RESUMABLE_FIELDS` does not list are refused by `facesearch.train.fit.train`.
    """
    import contextlib
    import dataclasses
    import sys

    from facesearch.embedder.core.errors import FaceSearchError
    from facesearch.train.config import TrainConfig, get_preset
    from facesearch.train.fit import train

    if resume is not None and out is not None and Path(out).resolve() != Path(resume).resolve():
        raise FaceSearchError(f"--resume continues the run in '{resume}'; drop --out '{out}' (or make it the same)")
    if resume is None and out is None:
        raise FaceSearchError("pass --out RUN_DIR for a new run, or --resume RUN_DIR to continue one")
    overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "seed": seed}.items() if v is not None}
    overrides.update(options.overrides())
    if input_size is not None:
        overrides["input_height"], overrides["input_width"] = _parse_size(input_size)
    base = TrainConfig.load(resume) if resume is not None else get_preset(preset)
    config = dataclasses.replace(base, **overrides)
    # Keras draws its progress bar on stdout; stdout is for results (and --json) only.
    with contextlib.redirect_stdout(sys.stderr):
        result = train(data, resume if resume is not None else out, config, list_file=list_file,
                       resume=resume is not None, init_weights=init_weights)
    return result.to_dict()


def run_prepare(data: Path, out: Path, *, list_file: Path | None, val_fraction: float, seed: int,
                progress: bool) -> dict:
    """Write per-identity TFRecord shards of a folder or list-file dataset; returns a summary."""
    from facesearch.cli.progress import PhaseProgress
    from facesearch.train.data import scan_training_folder
    from facesearch.train.listfile import parse_list_file
    from facesearch.train.shards import write_shards

    dataset = scan_training_folder(data) if list_file is None else parse_list_file(list_file, data)
    with PhaseProgress(enabled=progress) as bar:
        shards = write_shards(dataset, out, val_fraction=val_fraction, seed=seed, progress=bar)
    return {"out_dir": str(Path(out).resolve()), "num_shards": len(shards.files), "num_classes": shards.num_classes,
            "num_train": int(shards.counts.sum()), "num_val": shards.num_val, "skipped": list(shards.skipped)}


def run_export(checkpoint: Path, out: Path, *, onnx: bool, savedmodel: bool, fuse_prelu: bool = False) -> dict:
    """Export a checkpoint; returns the model card and the measured parity."""
    import dataclasses

    from facesearch.embedder.core.errors import FaceSearchError
    from facesearch.embedder.export import ExportReport, export_model
    from facesearch.train.models import load_embedding_model

    if not (onnx or savedmodel):
        raise FaceSearchError("nothing to export: --no-onnx and --no-savedmodel together leave no format")
    model, config = load_embedding_model(checkpoint)
    card = export_model(model, out, onnx=onnx, savedmodel=savedmodel, fuse_prelu=fuse_prelu,
                        alignment_template=config.alignment_template if config is not None else None,
                        source=str(Path(checkpoint).resolve()))
    return {"model_dir": str(Path(out).resolve()), "card": card.to_dict(),
            "parity": dataclasses.asdict(ExportReport.load(out))}


def _parse_size(text: str) -> tuple[int, int]:
    from facesearch.embedder.core.errors import FaceSearchError

    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FaceSearchError(f"--input-size takes HxW such as 112x96, got '{text}'") from None
    return height, width
