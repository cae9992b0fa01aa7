"""`facesearch models ...`: install and list the ready-made models (the default: dlib's ResNet)."""

from __future__ import annotations

import functools
import sys
import time
from typing import Annotated

import typer

models_app = typer.Typer(help="Ready-made face models: install (convert once into the cache) and list.",
                         no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")]


def _friendly(command):
    """cli.main's `Error: ...` + exit 1 handling, looked up at call time (cli.main imports this module)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from cli.main import _friendly_errors

        return _friendly_errors(command)(*args, **kwargs)

    return wrapper


def stderr_progress():
    """A progress callback for `install_dlib_resnet`: one line per step on stderr, with the time taken."""
    started = time.perf_counter()

    def report(step: str, done: int, total: int) -> None:
        print(f"[{done}/{total}] {step} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    return report


def run_models_list() -> dict:
    """The installable models and where each is installed (None when it is not)."""
    from embedder.dlib_install import ALIASES, MODEL_NAME, installed_model_dir, model_dir

    installed = installed_model_dir()
    return {"cache": str(model_dir().parent), "models": [
        {"name": MODEL_NAME, "aliases": list(ALIASES), "default": True,
         "installed": installed is not None, "model_dir": str(installed or model_dir())}]}


@models_app.command("install")
@_friendly
def install(
    name: Annotated[str, typer.Argument(help="Model to install: dlib-resnet (dlib-resnet-v1).")] = "dlib-resnet",
    force: Annotated[bool, typer.Option(help="Convert again even if it is installed.")] = False,
    json_out: JsonOpt = False,
):
    """Convert a model once into the cache ($FACESEARCH_CACHE or ~/.cache/facesearch); needs TensorFlow.

    TensorFlow comes with facesearch's train extra; afterwards build-index and query need only the cache.
    """
    import dataclasses

    from embedder.dlib_install import canonical_name, install_dlib_resnet, installed_model_dir
    from embedder.export import ExportReport
    from embedder.model_card import ModelCard

    canonical_name(name)
    already = not force and installed_model_dir() is not None
    folder = install_dlib_resnet(force=force, progress=None if json_out else stderr_progress())
    result = {"model_dir": str(folder), "converted": not already, "card": ModelCard.load(folder).to_dict(),
              "parity": dataclasses.asdict(ExportReport.load(folder))}
    if json_out:
        typer.echo(_json(result))
        return
    card, parity = result["card"], result["parity"]
    typer.echo(f"{'already installed' if already else 'installed'} {card['name']} in {folder}\n"
               f"input {card['input_height']}x{card['input_width']} {card['channel_order']}, "
               f"{card['embedding_size']}-d, template {card['alignment_template']}\n"
               f"onnx: min cosine vs Keras {parity['onnx_min_cosine']:.7f} over {parity['parity_samples']} inputs\n"
               "next: facesearch build-index PHOTOS_DIR   (the default model needs no --model)")


@models_app.command("list")
@_friendly
def list_models(json_out: JsonOpt = False):
    """List the ready-made models and whether each is installed."""
    result = run_models_list()
    if json_out:
        typer.echo(_json(result))
        return
    for m in result["models"]:
        state = f"installed in {m['model_dir']}" if m["installed"] else "not installed (facesearch models install)"
        typer.echo(f"{m['name']}{' (default)' if m['default'] else ''}: {state}")


def _json(obj) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True)
