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
ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Model folder made by `facesearch export` (default $FACESEARCH_MODEL).")]


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
    data: Annotated[Path, typer.Argument(help="Training folder: DATA/<identity>/*.jpg.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, config, logs.")],
    preset: Annotated[str, typer.Option(help="Model/training preset: mobilefacenet or tiny.")] = "mobilefacenet",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default from the preset).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default from the preset).")] = None,
    input_size: Annotated[Optional[str], typer.Option(help="HxW model input: 112x96 or 112x112.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    json_out: JsonOpt = False,
):
    """Train MobileFaceNet + ArcFace on a folder of aligned face crops."""
    from cli.commands import run_train

    result = run_train(data, out, preset=preset, epochs=epochs, batch_size=batch_size,
                       input_size=input_size, seed=seed)
    if json_out:
        _print_json(result)
    else:
        from cli.output import format_train

        typer.echo(format_train(result))


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
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 64,
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable file instead of skipping it.")] = False,
    rebuild: Annotated[bool, typer.Option(help="Replace an index built with another model.")] = False,
    json_out: JsonOpt = False,
):
    """Embed a folder of faces into an index; run again to add what is new and drop what is gone."""
    from cli.commands import run_build_index

    report = run_build_index(directory, model=model, index=index, batch_size=batch_size,
                             strict=strict, rebuild=rebuild, progress=not json_out)
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
    json_out: JsonOpt = False,
):
    """Find the most likely identities for the face in IMAGE."""
    from cli.commands import run_query

    answer = run_query(image, index=index, model=model, k=k, threshold=threshold)
    if json_out:
        _print_json(answer)
    else:
        from cli.output import format_query

        typer.echo(format_query(answer))


@app.command()
@_friendly_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the demo's data, model and index.")] = Path(".demo"),
):
    """Run the whole pipeline on a generated face set: train, export, build an index, query it."""
    from cli.demo import run_demo

    run_demo(workdir)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
