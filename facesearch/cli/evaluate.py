"""`facesearch eval lfw` and `eval identify`: measure a model (no TensorFlow).

The measuring is `facesearch.embedder.evaluation.verification` and `facesearch.index.evaluation`; this module picks
the model and the data, draws the ROC curve and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli.options import AlignedOpt, JsonOpt, ModelOpt, emit, fpir_option, friendly_errors
from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import DatasetError

eval_app = typer.Typer(help="Measure a model: LFW pair verification, gallery/probe identification.",
                       no_args_is_help=True)


@eval_app.command("lfw")
@friendly_errors
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
    from facesearch.cli.output import format_eval_lfw

    result = run_eval_lfw(lfw_dir, model=model, pairs_file=pairs, images_dir=images_dir, batch_size=batch_size,
                          roc_png=None if no_roc else roc, calibrate=calibrate, aligned=aligned,
                          progress=not json_out)
    emit(result, json_out, format_eval_lfw)


@eval_app.command("identify")
@friendly_errors
def eval_identify(
    gallery: Annotated[Path, typer.Option("--gallery", help="Gallery folder: DIR/<identity>/*.jpg (indexed in a temporary folder).")],
    probes: Annotated[Path, typer.Option("--probes", help="Probe folder: DIR/<identity>/*.jpg; identities without a gallery folder are impostors.")],
    model: ModelOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = DEFAULT_BATCH_SIZE,
    aligned: AlignedOpt = False,
    fpir: fpir_option("Target FPIR the temporary index self-calibrates for (default 0.01).") = None,
    compare_rules: Annotated[bool, typer.Option("--compare-rules", help="Also self-calibrate every decision rule and fusion on the gallery and report each one's FPIR and DIR.")] = False,
    json_out: JsonOpt = False,
):
    """Identification: rank-1/rank-5 of enrolled probes; open-set DIR, and the FPIR/FNIR of the gallery's self-calibrated threshold."""
    from facesearch.cli.output import format_eval_identify

    result = run_eval_identify(gallery, probes, model=model, batch_size=batch_size, aligned=aligned,
                               progress=not json_out, fpir=fpir, compare_rules=compare_rules)
    emit(result, json_out, format_eval_identify)


def resolve_lfw_dir(lfw_dir: Path | None) -> Path:
    """--lfw-dir, else $FACESEARCH_LFW; the folder must exist."""
    from facesearch.embedder.core.environment import lfw_from_environment

    if lfw_dir is None and (lfw_dir := lfw_from_environment()) is None:
        raise DatasetError("no LFW folder given: pass --lfw-dir DIR (holding pairs.txt and the image "
                           "folder) or set FACESEARCH_LFW")
    if not lfw_dir.is_dir():
        raise DatasetError(f"LFW folder '{lfw_dir}' does not exist")
    return lfw_dir


def _model_fields(embedder) -> dict:
    return {"model": embedder.card.name, "model_dir": str(embedder.model_dir), "aligned": embedder.aligned}


def run_eval_lfw(lfw_dir: Path | None, *, model: Path | None, pairs_file: Path = Path("pairs.txt"),
                 images_dir: Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE, roc_png: Path | None = None,
                 calibrate: bool = False, aligned: bool = False, progress: bool = True) -> dict:
    """Verification figures on an LFW pair file; optionally a ROC PNG and a calibrated model card."""
    from facesearch.cli.models import embedder_for
    from facesearch.cli.progress import PhaseProgress
    from facesearch.embedder.evaluation.verification import calibrate_card, evaluate_pairs

    lfw_dir = resolve_lfw_dir(lfw_dir)
    embedder = embedder_for(model, aligned=aligned)
    with PhaseProgress(enabled=progress) as bar:
        evaluation = evaluate_pairs(embedder, lfw_dir, pairs_file, images_dir=images_dir, batch_size=batch_size,
                                    progress=bar)
    report = evaluation.report
    result = _model_fields(embedder) | evaluation.to_dict() | {"roc_png": None, "calibrated": None}
    if roc_png is not None:
        result["roc_png"] = _write_roc(roc_png, report, f"{embedder.card.name} on {evaluation.pairs_file.name}")
    if calibrate:
        result["calibrated"] = calibrate_card(embedder.model_dir, embedder.card,
                                              {"best_accuracy": report.threshold,
                                               "far_1e-3": report.at_far(1e-3).threshold})
    return result


def _write_roc(path: Path, report, name: str) -> str:
    from facesearch.cli.roc_plot import write_roc_png

    far, tar, _ = report.roc
    marks = [(p.far, p.tar, f"TAR {p.tar:.3f} @ FAR {p.far_target:g}") for p in report.operating_points]
    write_roc_png(path, far, tar, negatives=report.negatives, marks=marks,
                  title=f"{name}: accuracy {report.accuracy:.4f} +/- {report.accuracy_std:.4f}, AUC {report.auc:.4f}")
    return str(Path(path).resolve())


def run_eval_identify(gallery: Path, probes: Path, *, model: Path | None, batch_size: int = DEFAULT_BATCH_SIZE,
                      aligned: bool = False, progress: bool = True, fpir: float | None = None,
                      compare_rules: bool = False) -> dict:
    """Rank-1/rank-5 and open-set figures of the probes against a temporary index of the gallery."""
    from facesearch.cli.models import embedder_for
    from facesearch.cli.progress import PhaseProgress
    from facesearch.index.evaluation import evaluate_identification

    embedder = embedder_for(model, aligned=aligned)
    with PhaseProgress(enabled=progress) as bar:
        result = evaluate_identification(gallery, probes, embedder, batch_size=batch_size, progress=bar, fpir=fpir,
                                         compare_rules=compare_rules)
    return _model_fields(embedder) | result
