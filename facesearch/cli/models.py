"""`facesearch models ...` (install and list the ready-made models) and which model a command uses."""

from __future__ import annotations

from typing import Annotated

import typer

from facesearch.cli.options import JsonOpt, emit, friendly_errors

models_app = typer.Typer(help="Ready-made face models: install (convert once into the cache) and list.",
                         no_args_is_help=True)


# Which model a command uses is decided in one place, under the API (facesearch.api.models): the CLI, the
# service and users' scripts agree. Imported when called, so that `facesearch --help` loads no numpy.
def resolve_model(*args, **kwargs):
    from facesearch.api.models import resolve_model

    return resolve_model(*args, **kwargs)


def embedder_for(*args, **kwargs):
    from facesearch.api.models import embedder_for

    return embedder_for(*args, **kwargs)


def stderr_progress():
    from facesearch.api.models import stderr_progress

    return stderr_progress()


def run_models_list() -> dict:
    """The installable models and where each is installed (None when it is not)."""
    from facesearch.embedder.dlib.models import ALIASES, MODEL_NAME, installed_model_dir, model_dir

    installed = installed_model_dir()
    return {"cache": str(model_dir().parent), "models": [
        {"name": MODEL_NAME, "aliases": list(ALIASES), "default": True,
         "installed": installed is not None, "model_dir": str(installed or model_dir())}]}


def run_models_install(name: str, force: bool, progress: bool) -> dict:
    """Convert model `name` into the cache (once, unless `force`); its card and parity."""
    import dataclasses
    import json

    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.embedder.dlib.install import INSTALL_NOTES, install_dlib_resnet
    from facesearch.embedder.dlib.models import canonical_name, installed_model_dir
    from facesearch.embedder.export import ExportReport

    canonical_name(name)
    already = not force and installed_model_dir() is not None
    folder = install_dlib_resnet(force=force, progress=stderr_progress() if progress else None)
    notes = folder / INSTALL_NOTES  # how model.onnx was built and what it was checked against
    return {"model_dir": str(folder), "converted": not already, "card": ModelCard.load(folder).to_dict(),
            "parity": dataclasses.asdict(ExportReport.load(folder)),
            "install": json.loads(notes.read_text()) if notes.is_file() else None}


@models_app.command("install")
@friendly_errors
def install(
    name: Annotated[str, typer.Argument(help="Model to install: dlib-resnet (dlib-resnet-v1).")] = "dlib-resnet",
    force: Annotated[bool, typer.Option(help="Convert again even if it is installed.")] = False,
    json_out: JsonOpt = False,
):
    """Convert a model once into the cache ($FACESEARCH_CACHE or ~/.cache/facesearch); core dependencies only.

    Where TensorFlow is installed (the train extra) the graph is also checked against the Keras model.
    """
    from facesearch.cli.output import format_models_install

    emit(run_models_install(name, force, progress=not json_out), json_out, format_models_install)


@models_app.command("list")
@friendly_errors
def list_models(json_out: JsonOpt = False):
    """List the ready-made models and whether each is installed."""
    from facesearch.cli.output import format_models_list

    emit(run_models_list(), json_out, format_models_list)
