"""`facesearch build-index`, `query` and `detect`: the run-time commands (no TensorFlow).

A model is needed only once it is installed (`cli.models.resolve_model` converts the default
model at first use, the one step that needs the [train] extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.options import (
    AlignedOpt,
    FaceThresholdOpt,
    IndexOpt,
    JsonOpt,
    MinFaceOpt,
    ModelOpt,
    detector_config,
    emit,
    friendly_errors,
    index_dir,
)
from embedder.core.constants import DEFAULT_BATCH_SIZE


@friendly_errors
def build_index(
    directory: Annotated[Path, typer.Argument(help="Gallery folder: DIR/<identity>/*.jpg (or DIR/<identity>.jpg).")],
    model: ModelOpt = None,
    index: IndexOpt = None,
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
    from cli.output import format_build_report

    if faces not in ("largest", "all"):
        raise typer.BadParameter(f"expected 'largest' or 'all', got '{faces}'", param_hint="--faces")
    report = run_build_index(directory, model=model, index=index_dir(index), batch_size=batch_size,
                             strict=strict, rebuild=rebuild, progress=not json_out, faces=faces, aligned=aligned,
                             min_face_size=min_face_size, face_threshold=face_threshold)
    emit(report, json_out, format_build_report)


@friendly_errors
def query(
    image: Annotated[Path, typer.Argument(help="A photo of the face to look up.")],
    index: IndexOpt = None,
    model: ModelOpt = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Identities to list.")] = 5,
    threshold: Annotated[Optional[float], typer.Option(help="Score below which the answer is 'unknown' (default: the model card's).")] = None,
    aligned: AlignedOpt = False,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    json_out: JsonOpt = False,
):
    """Find the most likely identities for each face in IMAGE (exit 1 if it has none)."""
    from cli.output import format_query

    answer = run_query(image, index=index_dir(index), model=model, k=k, threshold=threshold, aligned=aligned,
                       min_face_size=min_face_size, face_threshold=face_threshold)
    emit(answer, json_out, format_query)


@friendly_errors
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
    from cli.output import format_detect

    answer = run_detect(image, out=out, crops=crops, model=model, template=template,
                        min_face_size=min_face_size, face_threshold=face_threshold)
    emit(answer, json_out, format_detect)


def recorded_model(index: Path) -> Path | None:
    """The model folder an existing index was built with, or None when there is no index yet."""
    from index import read_manifest

    if not (index / "manifest.json").is_file():
        return None
    return Path(read_manifest(index).model_dir)


def run_build_index(directory: Path, *, model: Path | None, index: Path, batch_size: int, strict: bool,
                    rebuild: bool, progress: bool, faces: str = "largest", aligned: bool = False,
                    min_face_size: int | None = None, face_threshold: float | None = None) -> dict:
    """Build or update the index at `index` from `directory`; returns the build report."""
    from cli.models import embedder_for
    from cli.progress import PhaseProgress
    from index import build_index

    embedder = embedder_for(model, recorded=recorded_model(index), aligned=aligned, min_face_size=min_face_size,
                            face_threshold=face_threshold)
    with PhaseProgress(enabled=progress) as bar:
        report = build_index(directory, index, embedder, batch_size=batch_size, strict=strict,
                             rebuild=rebuild, faces=faces, progress=bar)
    return report.to_dict() | {"model": embedder.card.name, "model_dir": str(embedder.model_dir),
                               "faces_policy": faces, "aligned": embedder.aligned}


def run_query(image: Path, *, index: Path, model: Path | None, k: int, threshold: float | None,
              aligned: bool = False, min_face_size: int | None = None, face_threshold: float | None = None) -> dict:
    """Answer every face in `image` with its top-k identities and a verdict (`index.query.FaceSearcher`).

    Raises:
        NoFaceFoundError: the detector finds no face in `image`.
    """
    from cli.models import embedder_for
    from index import GalleryIndex
    from index.query import FaceSearcher

    with GalleryIndex.open(index) as gallery:
        embedder = embedder_for(model, recorded=gallery.model_dir, aligned=aligned, min_face_size=min_face_size,
                                face_threshold=face_threshold)
        return FaceSearcher(gallery, embedder).answer_photo(image, k=k, threshold=threshold)


def run_detect(image: Path, *, out: Path | None, crops: Path | None, model: Path | None, template: str | None,
               min_face_size: int | None = None, face_threshold: float | None = None) -> dict:
    """Detect and align every face of `image`; optionally draw them and write the aligned crops.

    The template is --template, else the model card's (--model or $FACESEARCH_MODEL), else arcface-112x112.
    """
    from cli.models import resolve_model
    from embedder.align import ARCFACE_112X112, PREALIGNED, get_template
    from embedder.core.environment import model_from_environment
    from embedder.core.model_card import ModelCard
    from embedder.crop import detect_photo

    if template is None and (model is not None or model_from_environment() is not None):
        template = ModelCard.load(resolve_model(model)).alignment_template
    tmpl = get_template(template) if template and template not in PREALIGNED else ARCFACE_112X112
    return detect_photo(image, detector_config(min_face_size, face_threshold), tmpl, annotated=out, crops=crops)
