"""What each command does, as functions that return plain dicts (the --json answers).

Each one imports what it needs when called: TensorFlow only in train/export.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from embedder.errors import ModelSpecError


def resolve_model(model: Path | None, recorded: Path | None = None) -> Path:
    """The model folder to use: --model, else $FACESEARCH_MODEL, else the one an index recorded,
    else the default model (dlib-resnet-v1), converted into the cache at first use."""
    if model is not None:
        return model
    if os.environ.get("FACESEARCH_MODEL"):
        return Path(os.environ["FACESEARCH_MODEL"])
    if recorded is not None:
        if not recorded.is_dir():
            raise ModelSpecError(f"the model this index was built with ('{recorded}') is gone: "
                                 "pass --model with the same model, or rebuild the index")
        return recorded
    from cli.models import stderr_progress
    from embedder.dlib_install import MODEL_NAME, default_model_dir

    try:
        return default_model_dir(progress=stderr_progress())
    except ModelSpecError as e:
        raise ModelSpecError(f"no model given and the default model '{MODEL_NAME}' is not installed: {e}") from e


def _recorded_model(index: Path) -> Path | None:
    from index import read_manifest

    if not (index / "manifest.json").is_file():
        return None
    return Path(read_manifest(index).model_dir)


def detector_config(min_face_size: int | None = None, face_threshold: float | None = None):
    """The detection options with the CLI's overrides (None keeps a default)."""
    import dataclasses

    from embedder.detect import DetectorConfig

    overrides = {k: v for k, v in {"min_face_size": min_face_size, "score_threshold": face_threshold}.items()
                 if v is not None}
    return dataclasses.replace(DetectorConfig(), **overrides)


def run_build_index(directory: Path, *, model: Path | None, index: Path, batch_size: int, strict: bool,
                    rebuild: bool, progress: bool, faces: str = "largest", aligned: bool = False,
                    min_face_size: int | None = None, face_threshold: float | None = None) -> dict:
    """Build or update the index at `index` from `directory`; returns the build report."""
    from cli.progress import PhaseProgress
    from embedder.runtime import Embedder
    from index import build_index

    embedder = Embedder(resolve_model(model, _recorded_model(index)), aligned=aligned or None,
                        detector=detector_config(min_face_size, face_threshold))
    with PhaseProgress(enabled=progress) as bar:
        report = build_index(directory, index, embedder, batch_size=batch_size, strict=strict,
                             rebuild=rebuild, faces=faces, progress=bar)
    return report.to_dict() | {"model": embedder.card.name, "model_dir": str(embedder.model_dir),
                               "faces_policy": faces, "aligned": embedder.aligned}


def run_query(image: Path, *, index: Path, model: Path | None, k: int, threshold: float | None,
              aligned: bool = False, min_face_size: int | None = None, face_threshold: float | None = None) -> dict:
    """Answer every face in `image` with its top-k identities and a verdict.

    Raises:
        NoFaceFoundError: the detector finds no face in `image`.
    """
    from embedder.errors import NoFaceFoundError
    from embedder.runtime import Embedder
    from index import GalleryIndex

    with GalleryIndex.open(index) as gallery:
        embedder = Embedder(resolve_model(model, gallery.model_dir), aligned=aligned or None,
                            detector=detector_config(min_face_size, face_threshold))
        gallery.check_model(embedder.card)
        # The model folder's card, not the index's copy of it: `eval lfw --calibrate` may have
        # calibrated the model's thresholds after the index was built (same weights, same index).
        used_threshold = embedder.card.default_threshold if threshold is None else float(threshold)
        crops = embedder.faces(image)
        if not crops:
            raise NoFaceFoundError(image, "try a lower --min-face-size or --face-threshold, or --aligned "
                                          "if the photo is already a face crop")
        vectors = embedder.embed([c.image for c in crops])
        faces = []
        for crop, vector in zip(crops, vectors):
            result = gallery.rank_identities(vector, k=k, threshold=used_threshold)
            faces.append({"box": None if crop.box is None else [float(v) for v in crop.box]} | result.to_dict())
    return {"image": str(image), "index": str(Path(index).resolve()), "model": embedder.card.name,
            "threshold": used_threshold, "faces": faces}


def run_detect(image: Path, *, out: Path | None, crops: Path | None, model: Path | None, template: str | None,
               min_face_size: int | None = None, face_threshold: float | None = None) -> dict:
    """Detect and align every face of `image`; optionally draw them and write the aligned crops.

    The template is --template, else the model card's (--model or $FACESEARCH_MODEL), else arcface-112x112.
    """
    from embedder.align import ARCFACE_112X112, PREALIGNED, get_template
    from embedder.detect import Detector
    from embedder.detect_draw import draw_detections, write_crops
    from embedder.images import read_image
    from embedder.model_card import ModelCard

    if template is None and (model is not None or os.environ.get("FACESEARCH_MODEL")):
        template = ModelCard.load(resolve_model(model)).alignment_template
    tmpl = get_template(template) if template and template not in PREALIGNED else ARCFACE_112X112
    photo = read_image(image)
    detections = Detector(detector_config(min_face_size, face_threshold)).detect(photo)
    answer = {"image": str(image), "width": photo.shape[1], "height": photo.shape[0], "template": tmpl.name,
              "faces": [{"box": [float(v) for v in d.box], "score": d.score,
                         "landmarks": [[float(x), float(y)] for x, y in d.landmarks]} for d in detections]}
    if out is not None:
        draw_detections(photo, detections, out)
        answer["annotated"] = str(out)
    if crops is not None:
        answer["crops"] = [str(p) for p in write_crops(photo, detections, tmpl, crops, stem=Path(image).stem)]
    return answer


@dataclass(frozen=True)
class TrainOptions:
    """`facesearch train` flags that override config fields; None leaves the preset's (or the resumed run's)."""

    val_fraction: float | None = None
    val_pairs: Path | None = None
    val_root: Path | None = None
    lr_schedule: str | None = None
    lr_steps: str | None = None
    lr_factor: float | None = None
    checkpoint_every: int | None = None
    checkpoint_unit: str | None = None
    keep_checkpoints: int | None = None
    mixed_precision: str | None = None
    cache: bool | None = None
    cache_file: Path | None = None

    def overrides(self) -> dict:
        """The `TrainConfig` fields these flags set (paths made absolute: a resume may run elsewhere)."""
        from embedder.errors import FaceSearchError

        if self.cache and self.cache_file is not None:
            raise FaceSearchError("pass --cache (in memory) or --cache-file PATH, not both")
        fields = {"val_fraction": self.val_fraction, "lr_schedule": self.lr_schedule, "lr_factor": self.lr_factor,
                  "checkpoint_every": self.checkpoint_every, "checkpoint_unit": self.checkpoint_unit,
                  "keep_checkpoints": self.keep_checkpoints, "mixed_precision": self.mixed_precision}
        if self.val_pairs is not None or self.val_root is not None:
            if self.val_pairs is None or self.val_root is None:
                raise FaceSearchError("--val-pairs FILE and --val-root DIR go together: pass both")
            fields["val_pair_file"] = str(self.val_pairs.resolve())
            fields["val_image_root"] = str(self.val_root.resolve())
        if self.lr_steps is not None:
            fields["lr_steps"] = _parse_epochs(self.lr_steps)
        if self.cache is not None:
            fields["cache"] = "memory" if self.cache else ""
        if self.cache_file is not None:
            fields["cache"] = str(self.cache_file.resolve())
        return {k: v for k, v in fields.items() if v is not None}


def _parse_epochs(text: str) -> tuple[int, ...]:
    from embedder.errors import FaceSearchError

    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise FaceSearchError(f"--lr-steps takes comma-separated epoch numbers such as 8,14; got '{text}'") from None


def run_train(data: Path, out: Path | None, *, preset: str, epochs: int | None, batch_size: int | None,
              input_size: str | None, seed: int | None, list_file: Path | None = None,
              resume: Path | None = None, init_weights: Path | None = None,
              options: TrainOptions = TrainOptions()) -> dict:
    """Train a preset on a folder, list-file or shard dataset, with CLI flags overriding the preset.

    With `resume`, the run folder's own config.json is the base instead of the preset; flags
    that change what `train.config.RESUMABLE_FIELDS` does not list are refused by `train.fit.train`.
    """
    import contextlib
    import dataclasses
    import sys

    from embedder.errors import FaceSearchError
    from train.config import TrainConfig, get_preset
    from train.fit import train

    if resume is not None and out is not None and Path(out).resolve() != Path(resume).resolve():
        raise FaceSearchError(f"--resume continues the run in '{resume}'; drop --out '{out}' (or make it the same)")
    if resume is None and out is None:
        raise FaceSearchError("pass --out RUN_DIR for a new run, or --resume RUN_DIR to continue one")
    overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "seed": seed}.items() if v is not None}
    overrides.update(options.overrides())
    if input_size is not None:
        overrides["input_height"], overrides["input_width"] = _parse_size(input_size)
    base = TrainConfig.load(resume) if resume is not None else get_preset(preset)
    config = dataclasses.replace(base, **overrides)
    # Keras draws its progress bar on stdout; stdout is for results (and --json) only.
    with contextlib.redirect_stdout(sys.stderr):
        result = train(data, resume if resume is not None else out, config, list_file=list_file,
                       resume=resume is not None, init_weights=init_weights)
    return result.to_dict()


def run_prepare(data: Path, out: Path, *, list_file: Path | None, val_fraction: float, seed: int,
                progress: bool) -> dict:
    """Write per-identity TFRecord shards of a folder or list-file dataset; returns a summary."""
    from cli.progress import PhaseProgress
    from train.data import scan_folder
    from train.listfile import parse_list_file
    from train.shards import write_shards

    dataset = scan_folder(data) if list_file is None else parse_list_file(list_file, data)
    with PhaseProgress(enabled=progress) as bar:
        shards = write_shards(dataset, out, val_fraction=val_fraction, seed=seed, progress=bar)
    return {"out_dir": str(Path(out).resolve()), "num_shards": len(shards.files), "num_classes": shards.num_classes,
            "num_train": int(shards.counts.sum()), "num_val": shards.num_val, "skipped": list(shards.skipped)}


def run_export(checkpoint: Path, out: Path, *, onnx: bool, savedmodel: bool, fuse_prelu: bool = False) -> dict:
    """Export a checkpoint; returns the model card and the measured parity."""
    import dataclasses

    from embedder.errors import FaceSearchError
    from embedder.export import ExportReport, export_model

    if not (onnx or savedmodel):
        raise FaceSearchError("nothing to export: --no-onnx and --no-savedmodel together leave no format")
    card = export_model(checkpoint, out, onnx=onnx, savedmodel=savedmodel, fuse_prelu=fuse_prelu)
    return {"model_dir": str(Path(out).resolve()), "card": card.to_dict(),
            "parity": dataclasses.asdict(ExportReport.load(out))}


def _parse_size(text: str) -> tuple[int, int]:
    from embedder.errors import FaceSearchError

    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FaceSearchError(f"--input-size takes HxW such as 112x96, got '{text}'") from None
    return height, width
