"""`facesearch models ...` (install and list the ready-made models) and which model a command uses."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from facesearch.cli.options import JsonOpt, detector_config, emit, friendly_errors
from facesearch.embedder.core.errors import ModelSpecError

models_app = typer.Typer(help="Ready-made face models: install (convert once into the cache) and list.",
                         no_args_is_help=True)


def resolve_model(model: Path | None, recorded: Path | None = None) -> Path:
    """The model folder to use: --model, else $FACESEARCH_MODEL, else the one an index recorded,
    else the default model (dlib-resnet-v1), converted into the cache at first use.

    Only that first-use conversion imports TensorFlow (the [train] extra); an installed default
    model is found by reading its card (`facesearch.embedder.dlib.models`).
    """
    from facesearch.embedder.core.environment import model_from_environment
    from facesearch.embedder.dlib.models import MODEL_NAME, installed_model_dir

    if model is not None:
        return model
    if (from_env := model_from_environment()) is not None:
        return from_env
    if recorded is not None:
        if not recorded.is_dir():
            raise ModelSpecError(f"the model this index was built with ('{recorded}') is gone: "
                                 "pass --model with the same model, or rebuild the index")
        return recorded
    if (installed := installed_model_dir()) is not None:
        return installed
    from facesearch.embedder.dlib.install import install_dlib_resnet

    try:
        return install_dlib_resnet(progress=stderr_progress())
    except ModelSpecError as e:
        raise ModelSpecError(f"no model given and the default model '{MODEL_NAME}' is not installed: {e}") from e


def embedder_for(model: Path | None, *, recorded: Path | None = None, aligned: bool = False,
                 min_face_size: int | None = None, face_threshold: float | None = None):
    """The `Embedder` a command uses: the resolved model, the detector options, aligned or not."""
    from facesearch.embedder.runtime import Embedder

    return Embedder(resolve_model(model, recorded), aligned=aligned or None,
                    detector=detector_config(min_face_size, face_threshold))


def stderr_progress():
    """A progress callback for `install_dlib_resnet`: one line per step on stderr, with the time taken."""
    started = time.perf_counter()

    def report(step: str, done: int, total: int) -> None:
        print(f"[{done}/{total}] {step} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    return report


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

    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.embedder.dlib.install import install_dlib_resnet
    from facesearch.embedder.dlib.models import canonical_name, installed_model_dir
    from facesearch.embedder.export import ExportReport

    canonical_name(name)
    already = not force and installed_model_dir() is not None
    folder = install_dlib_resnet(force=force, progress=stderr_progress() if progress else None)
    return {"model_dir": str(folder), "converted": not already, "card": ModelCard.load(folder).to_dict(),
            "parity": dataclasses.asdict(ExportReport.load(folder))}


@models_app.command("install")
@friendly_errors
def install(
    name: Annotated[str, typer.Argument(help="Model to install: dlib-resnet (dlib-resnet-v1).")] = "dlib-resnet",
    force: Annotated[bool, typer.Option(help="Convert again even if it is installed.")] = False,
    json_out: JsonOpt = False,
):
    """Convert a model once into the cache ($FACESEARCH_CACHE or ~/.cache/facesearch); needs TensorFlow.

    TensorFlow comes with facesearch's train extra; afterwards build-index and query need only the cache.
    """
    from facesearch.cli.output import format_models_install

    emit(run_models_install(name, force, progress=not json_out), json_out, format_models_install)


@models_app.command("list")
@friendly_errors
def list_models(json_out: JsonOpt = False):
    """List the ready-made models and whether each is installed."""
    from facesearch.cli.output import format_models_list

    emit(run_models_list(), json_out, format_models_list)
