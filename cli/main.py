"""The `facesearch` Typer app. Commands parse options, call the packages and print; nothing else.

Heavy modules (TensorFlow, ONNX Runtime, FAISS) are imported inside the commands, so
`facesearch --help` stays fast and `facesearch query` never imports TensorFlow.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from embedder import DEFAULT_BATCH_SIZE
from embedder.errors import FaceSearchError

app = typer.Typer(
    help="Face search: train an embedder, export it, index a gallery of faces, query it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_INDEX = Path(os.environ.get("FACESEARCH_INDEX", "facesearch-index"))

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")]
IndexOpt = Annotated[Path, typer.Option("--index", help="Index folder (default $FACESEARCH_INDEX or ./facesearch-index).")]
ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Model folder made by `facesearch export` (default $FACESEARCH_MODEL, else the index's model, else dlib-resnet-v1).")]
AlignedOpt = Annotated[bool, typer.Option("--aligned", help="Photos are already aligned face crops: skip detection, resize each whole photo.")]
MinFaceOpt = Annotated[Optional[int], typer.Option("--min-face-size", min=4, help="Smallest face side to look for, in pixels (default 20).")]
FaceThresholdOpt = Annotated[Optional[float], typer.Option("--face-threshold", min=0.0, max=1.0, help="Detector score a face needs (default 0.8).")]


def _friendly_errors(command):
    """Turn a FaceSearchError into `Error: ...` on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FaceSearchError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True))


@app.command()
@_friendly_errors
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
    from cli.commands import TrainOptions, run_train

    options = TrainOptions(val_fraction=val_fraction, val_pairs=val_pairs, val_root=val_root,
                           lr_schedule=lr_schedule, lr_steps=lr_steps, lr_factor=lr_factor,
                           checkpoint_every=checkpoint_every, checkpoint_unit=checkpoint_unit,
                           keep_checkpoints=keep_checkpoints, mixed_precision=mixed_precision,
                           cache=cache, cache_file=cache_file)
    result = run_train(data, out, preset=preset, epochs=epochs, batch_size=batch_size,
                       input_size=input_size, seed=seed, list_file=list_file, resume=resume,
                       init_weights=init_weights, options=options)
    if json_out:
        _print_json(result)
    else:
        from cli.output import format_train

        typer.echo(format_train(result))


# A top-level `prepare`, not `train prepare`: `train` takes DATA as its first argument, and a Click
# group cannot tell `train prepare X` from `train DATA` without guessing, so `facesearch train DATA`
# stays a plain command and its input step is a sibling.
@app.command()
@_friendly_errors
def prepare(
    data: Annotated[Path, typer.Argument(help="Training folder DATA/<identity>/*.jpg; with --list, the image root.")],
    out: Annotated[Path, typer.Option("--out", help="Shard folder to write: one TFRecord per identity, val.tfrecord, shards.json.")],
    list_file: Annotated[Optional[Path], typer.Option("--list", help="List file of 'relative/path.jpg label' lines under DATA.")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.99, help="Share of each identity held out for pair verification, seeded.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the hold-out choice.")] = 0,
    json_out: JsonOpt = False,
):
    """Write per-identity TFRecord shards for `facesearch train SHARDS --out RUN` (pairs of one identity per batch)."""
    from cli.commands import run_prepare

    result = run_prepare(data, out, list_file=list_file, val_fraction=val_fraction, seed=seed,
                         progress=not json_out)
    if json_out:
        _print_json(result)
    else:
        typer.echo(f"wrote {result['num_shards']} shards ({result['num_train']} images of {result['num_classes']} "
                   f"identities) and {result['num_val']} held-out images to {result['out_dir']}; "
                   f"skipped {len(result['skipped'])} unreadable")
        for path in result["skipped"][:10]:
            typer.echo(f"  unreadable: {path}")
        typer.echo(f"next: facesearch train {result['out_dir']} --out RUN_DIR")


@app.command()
@_friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A run folder from `facesearch train`, or its .keras checkpoint.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Write model.onnx (needed by build-index/query).")] = True,
    savedmodel: Annotated[bool, typer.Option("--savedmodel/--no-savedmodel", help="Write a TensorFlow SavedModel.")] = True,
    fuse_prelu: Annotated[bool, typer.Option(help="Write each PReLU as one ONNX PRelu node (slower in ONNX Runtime 1.32 on CPU; see README).")] = False,
    json_out: JsonOpt = False,
):
    """Truncate a trained model to its embedding layer and export it, proving numeric parity."""
    from cli.commands import run_export

    result = run_export(checkpoint, out, onnx=onnx, savedmodel=savedmodel, fuse_prelu=fuse_prelu)
    if json_out:
        _print_json(result)
    else:
        from cli.output import format_export

        typer.echo(format_export(result))


@app.command("build-index")
@_friendly_errors
def build_index(
    directory: Annotated[Path, typer.Argument(help="Gallery folder: DIR/<identity>/*.jpg (or DIR/<identity>.jpg).")],
    model: ModelOpt = None,
    index: IndexOpt = DEFAULT_INDEX,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = DEFAULT_BATCH_SIZE,
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable file instead of skipping it.")] = False,
    rebuild: Annotated[bool, typer.Option(help="Replace an index built with another model.")] = False,
    faces: Annotated[str, typer.Option("--faces", help="Faces stored per photo: 'largest' or 'all'.")] = "largest",
    aligned: AlignedOpt = False,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    json_out: JsonOpt = False,
):
    """Embed a folder of faces into an index; run again to add what is new and drop what is gone."""
    from cli.commands import run_build_index

    if faces not in ("largest", "all"):
        raise typer.BadParameter(f"expected 'largest' or 'all', got '{faces}'", param_hint="--faces")
    report = run_build_index(directory, model=model, index=index, batch_size=batch_size,
                             strict=strict, rebuild=rebuild, progress=not json_out, faces=faces, aligned=aligned,
                             min_face_size=min_face_size, face_threshold=face_threshold)
    if json_out:
        _print_json(report)
    else:
        from cli.output import format_build_report

        typer.echo(format_build_report(report))


@app.command()
@_friendly_errors
def query(
    image: Annotated[Path, typer.Argument(help="A photo of the face to look up.")],
    index: IndexOpt = DEFAULT_INDEX,
    model: ModelOpt = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Identities to list.")] = 5,
    threshold: Annotated[Optional[float], typer.Option(help="Score below which the answer is 'unknown' (default: the model card's).")] = None,
    aligned: AlignedOpt = False,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    json_out: JsonOpt = False,
):
    """Find the most likely identities for each face in IMAGE (exit 1 if it has none)."""
    from cli.commands import run_query

    answer = run_query(image, index=index, model=model, k=k, threshold=threshold, aligned=aligned,
                       min_face_size=min_face_size, face_threshold=face_threshold)
    if json_out:
        _print_json(answer)
    else:
        from cli.output import format_query

        typer.echo(format_query(answer))


@app.command()
@_friendly_errors
def detect(
    image: Annotated[Path, typer.Argument(help="A photo.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the photo with boxes and landmarks drawn (e.g. annotated.png).")] = None,
    crops: Annotated[Optional[Path], typer.Option("--crops", help="Write each aligned face crop into this folder.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Align crops to this model's template (default $FACESEARCH_MODEL, else arcface-112x112).")] = None,
    template: Annotated[Optional[str], typer.Option("--template", help="Alignment template: arcface-112x112, sphereface-112x96, ...")] = None,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    json_out: JsonOpt = False,
):
    """Find every face in IMAGE: box, score and 5 landmarks; draw them and write aligned crops."""
    from cli.commands import run_detect

    answer = run_detect(image, out=out, crops=crops, model=model, template=template,
                        min_face_size=min_face_size, face_threshold=face_threshold)
    if json_out:
        _print_json(answer)
    else:
        from cli.output import format_detect

        typer.echo(format_detect(answer))


@app.command()
@_friendly_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the demo's data, model and index.")] = Path(".demo"),
    photos: Annotated[Optional[Path], typer.Option(help="Real photos, DIR/<person>/<photo>.jpg: index a few of each person with the default model and query held-out ones.")] = None,
):
    """Run the main job end to end: on real photos (--photos) with the default model, else train on a generated face set."""
    from cli.demo import run_demo

    run_demo(workdir, photos)


eval_app = typer.Typer(help="Measure a model: LFW pair verification, gallery/probe identification.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("lfw")
@_friendly_errors
def eval_lfw(
    lfw_dir: Annotated[Optional[Path], typer.Option("--lfw-dir", help="LFW folder with pairs.txt and images_deepfunneled/ (default $FACESEARCH_LFW).")] = None,
    model: ModelOpt = None,
    pairs: Annotated[Path, typer.Option(help="Pair file, relative to --lfw-dir: pairs.txt (10 folds) or pairsDevTest.txt.")] = Path("pairs.txt"),
    images_dir: Annotated[Optional[Path], typer.Option(help="Folder of <name>/<name>_NNNN.jpg (default: found in --lfw-dir).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = DEFAULT_BATCH_SIZE,
    roc: Annotated[Optional[Path], typer.Option(help="ROC curve PNG to write.")] = Path("lfw-roc.png"),
    no_roc: Annotated[bool, typer.Option("--no-roc", help="Write no ROC curve.")] = False,
    calibrate: Annotated[bool, typer.Option(help="Store the best-accuracy and FAR=1e-3 thresholds in the model card (used by query).")] = False,
    aligned: AlignedOpt = False,
    json_out: JsonOpt = False,
):
    """Pair verification on LFW: 10-fold accuracy, ROC/AUC, TAR at FAR 1e-3 and 1e-2, best threshold."""
    from cli.evaluate import run_eval_lfw

    result = run_eval_lfw(lfw_dir, model=model, pairs_file=pairs, images_dir=images_dir, batch_size=batch_size,
                          roc_png=None if no_roc else roc, calibrate=calibrate, aligned=aligned,
                          progress=not json_out)
    if json_out:
        _print_json(result)
    else:
        from cli.output import format_eval_lfw

        typer.echo(format_eval_lfw(result))


@eval_app.command("identify")
@_friendly_errors
def eval_identify(
    gallery: Annotated[Path, typer.Option("--gallery", help="Gallery folder: DIR/<identity>/*.jpg (indexed in a temporary folder).")],
    probes: Annotated[Path, typer.Option("--probes", help="Probe folder: DIR/<identity>/*.jpg; identities without a gallery folder are impostors.")],
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = DEFAULT_BATCH_SIZE,
    aligned: AlignedOpt = False,
    json_out: JsonOpt = False,
):
    """Identification: rank-1/rank-5 of enrolled probes, open-set DIR at false alarm rates for impostors."""
    from cli.evaluate import run_eval_identify

    result = run_eval_identify(gallery, probes, model=model, batch_size=batch_size, aligned=aligned,
                               progress=not json_out)
    if json_out:
        _print_json(result)
    else:
        from cli.output import format_eval_identify

        typer.echo(format_eval_identify(result))


from cli.models import models_app  # noqa: E402  (its commands use the helpers above at call time)

app.add_typer(models_app, name="models")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
