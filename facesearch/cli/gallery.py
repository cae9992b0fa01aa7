"""`facesearch build-index`, `query` and `detect`: the run-time commands (no TensorFlow).

A model is needed only once it is installed (`facesearch.cli.models.resolve_model` converts the default
model at first use, with the core dependencies alone).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
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
def build_index(
    directory: Annotated[Optional[Path], typer.Argument(help="Gallery folder: DIR/<identity>/*.jpg (or DIR/<identity>.jpg).", show_default=False)] = None,
    model: ModelOpt = None,
    index: IndexOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = DEFAULT_BATCH_SIZE,
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable file instead of skipping it.")] = False,
    rebuild: Annotated[bool, typer.Option(help="Replace an index built with another model.")] = False,
    faces: Annotated[str, typer.Option("--faces", help="Faces stored per photo: 'largest' or 'all'.")] = "largest",
    unlabeled: Annotated[bool, typer.Option("--unlabeled", help="The photos have no identity (any layout): store every face without one, for `facesearch people` to group and name.")] = False,
    aligned: AlignedOpt = False,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Processes reading, detecting and embedding photos (default: the cores available).")] = None,
    from_embeddings: Annotated[Optional[Path], typer.Option("--from-embeddings", help="Fill the index from this embedding shard folder (`facesearch embed`) instead of photos: same mirror rules, nothing embedded.")] = None,
    index_type: Annotated[Optional[str], typer.Option("--index-type", help="auto (by size), flat (exact), hnsw or ivf; a change rewrites the segments from their stored vectors (default: the index's, else auto).")] = None,
    memory_budget: Annotated[Optional[str], typer.Option("--memory-budget", help="Memory the search structures may take, e.g. 8G (default: the index's, else a share of this machine's RAM).")] = None,
    vector_dtype: Annotated[Optional[str], typer.Option("--vector-dtype", help="How the raw vectors kept beside the index are stored: float32 or float16 (new segments).")] = None,
    target_recall: Annotated[Optional[float], typer.Option("--target-recall", min=0.5, max=1.0, help="Share of the faces near or above the decision threshold that approximate segments must find at build, against exact search, beside identity agreement 0.999 (default: the index's, else 0.99).")] = None,
    fpir: fpir_option("False-positive identification rate the index's 'unknown' threshold is calibrated for, from the gallery itself (default: the stored one, else 0.01).") = None,
    json_out: JsonOpt = False,
):
    """Embed a folder of faces into an index; run again to add what is new and drop what is gone."""
    from facesearch.cli.output import format_build_report

    if faces not in ("largest", "all"):
        raise typer.BadParameter(f"expected 'largest' or 'all', got '{faces}'", param_hint="--faces")
    if (directory is None) == (from_embeddings is None):
        raise typer.BadParameter("pass a gallery folder or --from-embeddings SHARDS (one, not both)",
                                 param_hint="DIRECTORY")
    policy = {"index_type": index_type, "memory_budget": memory_budget, "vector_dtype": vector_dtype,
              "target_recall": target_recall}
    if unlabeled and from_embeddings is not None:
        raise typer.BadParameter("--unlabeled takes a folder of photos, not --from-embeddings", param_hint="--unlabeled")
    if from_embeddings is not None:
        from facesearch.api import open as open_gallery
        from facesearch.cli.progress import PhaseProgress

        with PhaseProgress(enabled=not json_out) as bar:
            report = open_gallery(index_dir(index, milvus=True), model=model).add_embeddings(
                from_embeddings, rebuild=rebuild, fpir=fpir, progress=bar, **policy).to_dict()
        emit(report | {"model": None, "model_dir": None, "faces_policy": None, "aligned": None}, json_out,
             format_build_report)
        return
    report = run_build_index(directory, model=model, index=index_dir(index, milvus=True), batch_size=batch_size,
                             strict=strict, rebuild=rebuild, progress=not json_out, faces=faces, aligned=aligned,
                             min_face_size=min_face_size, face_threshold=face_threshold, workers=workers, fpir=fpir,
                             labeled=not unlabeled, **policy)
    emit(report, json_out, format_build_report)


@friendly_errors
def query(
    images: Annotated[Optional[list[Path]], typer.Argument(help="Photos of faces to look up, or folders of photos (the model and index load once).", show_default=False)] = None,
    index: IndexOpt = None,
    model: ModelOpt = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Identities to list.")] = 5,
    threshold: Annotated[Optional[float], typer.Option(help="Best score below which the answer is 'unknown'; overrides --fpir and the index's calibrated threshold (default: the index's calibration, else the model card's).")] = None,
    fpir: fpir_option("Answer at this false-positive identification rate, from the index's calibration (default: the rate it was calibrated for).") = None,
    aligned: AlignedOpt = False,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    embeddings: Annotated[Optional[Path], typer.Option("--embeddings", help="Answer each row of this Parquet file (column 'embedding', the index's model) instead of photos; no image is read.")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Print one JSON object per photo (or --embeddings row) per line, in input order.")] = False,
    json_out: JsonOpt = False,
):
    """Find the most likely identities for each face in IMAGES (one photo: exit 1 if it has none).

    Several photos, a folder, --embeddings or --jsonl answer each input in turn: one that cannot be
    answered gets an "error" instead, a count goes to stderr, and the exit code is 1 only if none
    could be answered.
    """
    from facesearch.cli.output import format_query, format_query_lines

    if embeddings is not None and images:
        raise typer.BadParameter("pass photos or --embeddings FILE, not both", param_hint="IMAGES")
    if embeddings is None and not images:
        raise typer.BadParameter("pass a photo, several photos or folders, or --embeddings FILE", param_hint="IMAGES")
    if jsonl and json_out:
        raise typer.BadParameter("--json prints one object, --jsonl one per line: pass one of them", param_hint="--jsonl")
    options = {"index": index_dir(index, milvus=True), "model": model, "k": k, "threshold": threshold, "aligned": aligned,
               "min_face_size": min_face_size, "face_threshold": face_threshold, "fpir": fpir}
    if embeddings is None and len(images) == 1 and not images[0].is_dir() and not jsonl:
        emit(run_query(images[0], **options), json_out, format_query)  # one photo: as it always was
        return
    answers = run_query_batch(images or [], embeddings=embeddings, **options)
    answered = failed = 0
    collected = []
    for answer in answers:
        failed += "error" in answer
        answered += "error" not in answer
        if jsonl:
            typer.echo(json.dumps(answer, sort_keys=True))  # as each comes: a long run streams
        else:
            collected.append(answer)
    if json_out:
        emit({"answered": answered, "failed": failed, "answers": collected}, True, str)
    elif not jsonl:
        typer.echo(format_query_lines(collected))
    what = "rows" if embeddings is not None else "photos"
    typer.echo(f"answered {answered} of {answered + failed} {what}" + (f"; {failed} could not be answered (see their "
                                                                          "errors)" if failed else ""), err=True)
    if not answered:
        typer.echo(f"Error: none of the {failed} {what} could be answered", err=True)
        raise typer.Exit(1)


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
    from facesearch.cli.output import format_detect

    answer = run_detect(image, out=out, crops=crops, model=model, template=template,
                        min_face_size=min_face_size, face_threshold=face_threshold)
    emit(answer, json_out, format_detect)


def run_build_index(directory: Path, *, model: Path | None, index: Path | str, batch_size: int, strict: bool,
                    rebuild: bool, progress: bool, faces: str = "largest", aligned: bool = False,
                    min_face_size: int | None = None, face_threshold: float | None = None,
                    workers: int | None = None, fpir: float | None = None, labeled: bool = True, **policy) -> dict:
    """Build or update the index at `index` from `directory` (`Gallery.add`); returns the build report."""
    from facesearch.api import open as open_gallery
    from facesearch.cli.progress import PhaseProgress

    gallery = open_gallery(index, model=model, aligned=aligned, min_face_size=min_face_size,
                           face_threshold=face_threshold)
    with PhaseProgress(enabled=progress) as bar:
        report = gallery.add(directory, batch_size=batch_size, strict=strict, rebuild=rebuild, faces=faces,
                             workers=workers, progress=bar, fpir=fpir, labeled=labeled, **policy)
    embedder = gallery.embedder
    return report.to_dict() | {"model": embedder.card.name, "model_dir": str(embedder.model_dir),
                               "faces_policy": faces if labeled else "all", "aligned": embedder.aligned}


def run_query(image: Path, *, index: Path | str, model: Path | None, k: int, threshold: float | None,
              aligned: bool = False, min_face_size: int | None = None, face_threshold: float | None = None,
              fpir: float | None = None) -> dict:
    """Answer every face in `image` with its top-k identities and a verdict (`Gallery.search`).

    Raises:
        NoFaceFoundError: the detector finds no face in `image`.
    """
    from facesearch.api import open as open_gallery

    with open_gallery(index, model=model, aligned=aligned, min_face_size=min_face_size, face_threshold=face_threshold,
                      fpir=fpir) as gallery:
        return gallery.search(image, k=k, threshold=threshold).to_dict()


def run_query_batch(images: list[Path], *, embeddings: Path | None, index: Path | str, model: Path | None, k: int,
                    threshold: float | None, aligned: bool = False, min_face_size: int | None = None,
                    face_threshold: float | None = None, fpir: float | None = None) -> Iterator[dict]:
    """Answers for many photos (folders expanded, sorted) or for each row of `embeddings`, in input order.

    The index and model load once. Photos: `FaceSearcher.answer_photos` (an "error" entry for a
    photo without a face or unreadable). Rows: `FaceSearcher.answer_file`, no model run at all
    (only its card is read, for the default threshold).

    Raises:
        EmbeddingShardError, IndexMismatchError: `embeddings` is refused (before any answer).
    """
    from facesearch.api.milvus import open_index
    from facesearch.api.models import card_for_vectors
    from facesearch.cli.models import embedder_for
    from facesearch.index.query import FaceSearcher, photo_paths

    with open_index(index) as gallery:
        if embeddings is not None:
            searcher = FaceSearcher(gallery, card=card_for_vectors(model, gallery), fpir=fpir)
            yield from searcher.answer_file(embeddings, k=k, threshold=threshold)
            return
        paths = photo_paths(images)
        embedder = embedder_for(model, recorded=gallery.model_dir, aligned=aligned, min_face_size=min_face_size,
                                face_threshold=face_threshold)
        yield from FaceSearcher(gallery, embedder, fpir=fpir).answer_photos(paths, k=k, threshold=threshold)


def run_detect(image: Path, *, out: Path | None, crops: Path | None, model: Path | None, template: str | None,
               min_face_size: int | None = None, face_threshold: float | None = None) -> dict:
    """Detect and align every face of `image`; optionally draw them and write the aligned crops.

    The template is --template, else the model card's (--model or $FACESEARCH_MODEL), else arcface-112x112.
    """
    from facesearch.api.models import detector_config
    from facesearch.cli.models import resolve_model
    from facesearch.embedder.align import ARCFACE_112X112, PREALIGNED, get_template
    from facesearch.embedder.core.environment import model_from_environment
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.embedder.crop import detect_photo

    if template is None and (model is not None or model_from_environment() is not None):
        template = ModelCard.load(resolve_model(model)).alignment_template
    tmpl = get_template(template) if template and template not in PREALIGNED else ARCFACE_112X112
    return detect_photo(image, detector_config(min_face_size, face_threshold), tmpl, annotated=out, crops=crops)
