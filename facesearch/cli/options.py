"""What every command shares: option types, `Error: ...` handling, and printing JSON or text.

Imports no other command module, so the command modules never import each other through it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.embedder.core.errors import FaceSearchError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")]
IndexOpt = Annotated[Optional[str], typer.Option("--index", help="Index folder (default $FACESEARCH_INDEX or ./facesearch-index); build-index, query and remove also take a Milvus gallery: milvus://HOST[:PORT]/[DB/]COLLECTION, milvus+tls://... or milvus-lite:PATH.db[#COLLECTION] (docs/milvus.md).")]
ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Model folder made by `facesearch export` (default $FACESEARCH_MODEL, else the index's model, else dlib-resnet-v1).")]
AlignedOpt = Annotated[bool, typer.Option("--aligned", help="Photos are already aligned face crops: skip detection, resize each whole photo.")]
MinFaceOpt = Annotated[Optional[int], typer.Option("--min-face-size", min=4, help="Smallest face side to look for, in pixels (default 20).")]
FaceThresholdOpt = Annotated[Optional[float], typer.Option("--face-threshold", min=0.0, max=1.0, help="Detector score a face needs (default 0.8).")]


def friendly_errors(command: Callable) -> Callable:
    """Turn a FaceSearchError into `Error: ...` on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FaceSearchError as e:
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def emit(result: dict, json_out: bool, text: Callable[[dict], str]) -> None:
    """Print `result` as indented, key-sorted JSON, or as `text(result)`."""
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if json_out else text(result))


def index_dir(index: str | None, *, milvus: bool = False) -> Path | str:
    """--index, else $FACESEARCH_INDEX, else ./facesearch-index (read now, not at import): a folder's Path,
    or with `milvus` a Milvus address as given (a str: a Path would fold its `//`).

    Raises:
        MilvusError: a Milvus address given to a command that works on folder indexes only.
    """
    import os

    from facesearch.embedder.core.environment import default_index_dir
    from facesearch.index.milvus.address import is_milvus_address

    chosen = index if index is not None else os.environ.get("FACESEARCH_INDEX") or None
    if chosen is not None and is_milvus_address(chosen):
        if not milvus:
            from facesearch.embedder.core.errors import MilvusError

            raise MilvusError(f"'{chosen}' is a Milvus gallery; this command works on index folders only "
                              "(build-index, query and remove take Milvus galleries: docs/milvus.md)")
        return chosen
    return Path(chosen) if chosen is not None else default_index_dir()


def _check_fpir(value: float | None) -> float | None:
    if value is not None and not 0.0 < value < 1.0:
        raise typer.BadParameter(f"expected a rate strictly between 0 and 1 (e.g. 0.01 for 1%), got {value:g}")
    return value


def fpir_option(help: str):
    """The type of an `--fpir` option: a false-positive identification rate, strictly between 0 and 1."""
    return Annotated[Optional[float], typer.Option("--fpir", callback=_check_fpir, help=help)]
