"""dlib's own descriptors on fixed inputs, shipped with the package: every conversion must reproduce them.

`reference.npz` (beside this file, a few KB) holds six small uint8 patterns, each scaled up by pixel
repetition into a 150x150 RGB chip (exact, no interpolation: the inputs are the same bytes everywhere), and the
128-d descriptors that dlib itself (`face_recognition_model_v1.compute_face_descriptor`, dlib-bin) computed for
those chips from the same weight file. The conversion (`facesearch.embedder.dlib.install`) runs the model.onnx
it wrote on the chips and refuses the graph unless every descriptor matches dlib's: so the ONNX graph that numpy
and onnx built on the user's machine is proven against dlib, not only against another port of it.

Regenerate (the weight file changed, or dlib) with dlib-bin installed (the dev extra):

    python -m facesearch.embedder.dlib.reference
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.embedder.core.errors import ExportParityError

REFERENCE_FILE = Path(__file__).with_name("reference.npz")
CHIP_SIZE = 150
# Patterns as (side, count): blocks of 10 and of 6 pixels, so both coarse and finer detail reach every layer.
PATTERNS = ((15, 4), (25, 2))
PATTERN_SEED = 2026
# dlib and ONNX Runtime both compute in float32 with differently ordered sums; measured on the shipped chips:
# min cosine 0.9999999999997, largest element difference 3.0e-7 (descriptor elements are about 0.1 in size).
# A wrong weight, layer or padding moves them by orders of magnitude more.
MIN_COSINE = 0.99999
MAX_ABS_DIFF = 1e-4


@dataclass(frozen=True)
class ReferenceCheck:
    """What a model gave on the reference chips, against dlib's descriptors."""

    chips: int
    min_cosine: float
    max_abs_diff: float
    dlib_version: str

    def words(self) -> str:
        return (f"dlib's own descriptors ({self.dlib_version}) of {self.chips} fixed chips shipped in "
                f"{REFERENCE_FILE.name}: min cosine {self.min_cosine:.15f}, largest difference {self.max_abs_diff:.1e}")


def reference_chips(patterns: list[np.ndarray]) -> np.ndarray:
    """(n, 150, 150, 3) uint8 chips: each (side, side, 3) pattern repeated up to 150x150."""
    chips = []
    for pattern in patterns:
        scale = CHIP_SIZE // pattern.shape[0]
        chips.append(np.repeat(np.repeat(pattern, scale, axis=0), scale, axis=1))
    return np.stack(chips)


def load_reference(path: Path = REFERENCE_FILE) -> tuple[np.ndarray, np.ndarray, str]:
    """(chips uint8 (n, 150, 150, 3), dlib's descriptors float32 (n, 128), dlib's version).

    Raises:
        ExportParityError: the file is missing or damaged (a broken install of facesearch).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            patterns = [data[f"pattern_{i}"] for i in range(int(data["count"]))]
            descriptors = data["descriptors"].astype(np.float32)
            version = str(data["dlib_version"])
    except (OSError, KeyError, ValueError) as e:
        raise ExportParityError(f"the reference descriptors '{path}' cannot be read ({e}): reinstall facesearch") from e
    chips = reference_chips(patterns)
    if descriptors.shape != (len(chips), 128):
        raise ExportParityError(f"the reference descriptors '{path}' have shape {descriptors.shape}: reinstall facesearch")
    return chips, descriptors, version


def check_against_dlib(embed: Callable[[np.ndarray], np.ndarray], where: str) -> ReferenceCheck:
    """Run `embed` (uint8 chips -> raw descriptors) on the shipped chips and compare with dlib's descriptors.

    Raises:
        ExportParityError: a descriptor differs from dlib's by more than MIN_COSINE / MAX_ABS_DIFF allow.
    """
    chips, want, version = load_reference()
    got = np.asarray(embed(chips), dtype=np.float32)
    if got.shape != want.shape:
        raise ExportParityError(f"the converted model returns shape {got.shape} on the reference chips, dlib "
                                f"{want.shape}; {where}")
    a, b = got.astype(np.float64), want.astype(np.float64)
    cosines = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    cosine = float(cosines.min()) if np.isfinite(got).all() else float("nan")
    diff = float(np.abs(got - want).max())
    if not (cosine >= MIN_COSINE and diff <= MAX_ABS_DIFF):
        raise ExportParityError(f"the converted model does not reproduce dlib's own descriptors of the reference "
                                f"chips (min cosine {cosine:.7f}, needed {MIN_COSINE}; largest difference {diff:.1e}, "
                                f"allowed {MAX_ABS_DIFF:.0e}); {where}: report a facesearch bug")
    return ReferenceCheck(len(chips), cosine, diff, version)


def make_reference(path: Path = REFERENCE_FILE) -> None:
    """Compute dlib's descriptors of the patterns' chips and write `path` (needs dlib: the dev extra)."""
    import dlib

    from facesearch.embedder.dlib.weights import verified_weights

    rng = np.random.default_rng(PATTERN_SEED)
    patterns = [rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
                for side, count in PATTERNS for _ in range(count)]
    chips = reference_chips(patterns)
    recognizer = dlib.face_recognition_model_v1(str(verified_weights()))
    descriptors = np.array(recognizer.compute_face_descriptor(list(chips)), dtype=np.float32)
    arrays = {f"pattern_{i}": p for i, p in enumerate(patterns)}
    with open(path, "wb") as f:
        np.savez_compressed(f, count=np.int64(len(patterns)), descriptors=descriptors,
                            dlib_version=np.str_(f"dlib {dlib.__version__}"), **arrays)
    print(f"wrote {path} ({path.stat().st_size} bytes): {len(chips)} chips, dlib {dlib.__version__}")


if __name__ == "__main__":
    make_reference()
