"""`facesearch calibrate`: the index's open-set threshold, estimated again from its gallery or measured on strangers.

The work is `facesearch.index.recalibration.recalibrate`; this module picks the model (for stranger photos
only) and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli.options import (
    AlignedOpt,
    FaceThresholdOpt,
    IndexOpt,
    JsonOpt,
    MinFaceOpt,
    ModelOpt,
    emit,
    fpir_option,
    friendly_errors,
    index_dir,
)
from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE


@friendly_errors
def calibrate(
    index: IndexOpt = None,
    fpir: fpir_option("Target false-positive identification rate: the share of searches for people not enrolled that may be answered with someone (default: the stored one, else 0.01).") = None,
    strangers: Annotated[Optional[Path], typer.Option("--strangers", help="Photos of people who are NOT enrolled, DIR/<person>/*.jpg: measure the threshold on them instead of estimating it from the gallery.")] = None,
    model: ModelOpt = None,
    aligned: AlignedOpt = False,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call (--strangers).")] = DEFAULT_BATCH_SIZE,
    json_out: JsonOpt = False,
):
    """Set the index's 'unknown' threshold for a target FPIR: estimated from the gallery itself
    (leave-one-identity-out), or measured on photos of people who are not enrolled (--strangers)."""
    from facesearch.cli.output import format_calibration

    result = run_calibrate(index_dir(index), fpir=fpir, strangers=strangers, model=model, aligned=aligned,
                           min_face_size=min_face_size, face_threshold=face_threshold, batch_size=batch_size,
                           progress=not json_out)
    emit(result, json_out, format_calibration)


def run_calibrate(index: Path, *, fpir: float | None = None, strangers: Path | None = None, model: Path | None = None,
                  aligned: bool = False, min_face_size: int | None = None, face_threshold: float | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> dict:
    """Calibrate the index at `index` again (`facesearch.index.recalibration.recalibrate`); returns its answer."""
    from facesearch.cli.progress import PhaseProgress
    from facesearch.index import read_manifest
    from facesearch.index.recalibration import recalibrate

    embedder = None
    if strangers is not None:
        from facesearch.cli.models import embedder_for

        embedder = embedder_for(model, recorded=Path(read_manifest(index).model_dir), aligned=aligned,
                                min_face_size=min_face_size, face_threshold=face_threshold)
    with PhaseProgress(enabled=progress and strangers is not None) as bar:
        return recalibrate(index, fpir=fpir, strangers=strangers, embedder=embedder, batch_size=batch_size,
                           progress=bar)
