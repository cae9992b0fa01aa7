"""Pair verification of an embedder on an LFW-format pair file, and storing its thresholds in the card.

Each image is taken through the embedder's own detector and aligner (`facesearch.embedder.pipeline`); an
image that cannot be read or shows no face is a failure to enrol: listed, never fatal, and the
pairs it belongs to are left out of the figures (their number is reported).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import DatasetError, ModelSpecError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.embedder.evaluation.lfw import find_images_dir, read_pairs
from facesearch.embedder.evaluation.metrics import VerificationReport, pair_scores, verify_pairs
from facesearch.embedder.pipeline import FaceSource, embed_largest_faces


@dataclasses.dataclass
class PairEvaluation:
    """What `evaluate_pairs` measured; `to_dict` is `facesearch eval lfw --json` (less the CLI's fields)."""

    pairs_file: Path
    images_dir: Path
    images: int
    embedded: int
    failures: list[tuple[str, str]]
    pairs_excluded: int
    embed_seconds: float
    report: VerificationReport

    def to_dict(self) -> dict:
        return {"pairs_file": str(self.pairs_file), "images_dir": str(self.images_dir), "images": self.images,
                "embedded": self.embedded, "failures": [{"path": p, "reason": r} for p, r in self.failures],
                "pairs_excluded": self.pairs_excluded, "embed_seconds": self.embed_seconds,
                "images_per_second": self.images / max(self.embed_seconds, 1e-9),
                "verification": self.report.to_dict()}


def evaluate_pairs(embedder: FaceSource, lfw_dir: Path, pairs_file: Path = Path("pairs.txt"), *,
                   images_dir: Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   progress: Callable[[str, int, int], None] | None = None) -> PairEvaluation:
    """Verification figures of `embedder` on a pair file: k-fold accuracy, ROC/AUC, TAR at FAR.

    Args:
        embedder: finds and embeds faces.
        lfw_dir: the LFW folder; `pairs_file` is looked up in it first, then taken as given.
        pairs_file: pairs.txt (10 folds of 300 + 300), else 10 stratified folds in file order.
        images_dir: folder of <name>/<name>_NNNN.jpg; default found in `lfw_dir`.
        batch_size: photos per model call.
        progress: called as `progress(phase, done, total)`.

    Raises:
        DatasetError: missing files, or no pair with two embedded images.
    """
    pairs_path = lfw_dir / pairs_file if (lfw_dir / pairs_file).is_file() else pairs_file
    pair_list = read_pairs(pairs_path)
    images = images_dir if images_dir is not None else find_images_dir(lfw_dir)
    embedded = embed_largest_faces([images / p for p in pair_list.images], embedder, batch_size=batch_size,
                                   progress=progress, phase="embedding LFW images")
    a, b = pair_list.pairs[:, 0], pair_list.pairs[:, 1]
    valid = embedded.ok[a] & embedded.ok[b]
    if not valid.any():
        first = embedded.failures[0] if embedded.failures else None
        raise DatasetError(f"no pair of '{pairs_path}' has two embedded images ({len(embedded.failures)} of "
                           f"{len(pair_list.images)} images failed, e.g. {first})")
    scores = pair_scores(embedded.vectors[a[valid]], embedded.vectors[b[valid]])
    folds = 10 if pair_list.folds is None else pair_list.folds[valid]
    report = verify_pairs(scores, pair_list.same[valid], folds)
    return PairEvaluation(Path(pairs_path), Path(images), len(pair_list.images), int(embedded.ok.sum()),
                          embedded.failures, int((~valid).sum()), embedded.seconds, report)


def calibrate_card(model_dir: Path, card: ModelCard, thresholds: dict[str, float]) -> dict[str, float]:
    """Merge `thresholds` into the model card in `model_dir` (atomic write); returns the card's thresholds.

    Raises:
        ModelSpecError: the card on disk now describes other weights than `card` (re-exported meanwhile).
    """
    current = ModelCard.load(model_dir)
    if not current.same_model(card):
        raise ModelSpecError(f"the model in '{model_dir}' changed while it was being evaluated "
                             f"(now {current.describe()}); run the evaluation again")
    merged = {**current.thresholds, **{k: float(v) for k, v in thresholds.items()}}
    dataclasses.replace(current, thresholds=merged).save(model_dir)
    return merged
