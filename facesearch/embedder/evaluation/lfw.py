"""LFW pair files (pairs.txt, pairsDevTrain.txt, pairsDevTest.txt) read into image lists, pairs and folds.

Formats (fields separated by tabs or spaces):

- `pairs.txt` (the 10-fold "view 2" protocol): a header `SETS N`, then for each of the SETS folds
  N matched pairs `name n1 n2` followed by N mismatched pairs `name1 n1 name2 n2`.
- `pairsDevTrain.txt` / `pairsDevTest.txt` ("view 1"): a header `N`, then N matched and N mismatched
  pairs; these define no folds.

Image `n` of `name` is `<images_dir>/<name>/<name>_<n:04d>.jpg`. Pure Python and numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.embedder.core.errors import DatasetError

# Folders that hold the images in the LFW distributions, tried in this order.
IMAGE_FOLDERS = ("images_deepfunneled", "lfw-deepfunneled", "lfw_funneled", "lfw-funneled", "lfw", "images")


@dataclass(frozen=True)
class PairList:
    """The pairs of a pair file, over a list of distinct images (each to be embedded once).

    Attributes:
        images: distinct image paths relative to the images folder (`name/name_0001.jpg`), sorted.
        pairs: `(p, 2)` int64 indices into `images`, in file order.
        same: `(p,)` bool, True for matched pairs.
        folds: `(p,)` int64 fold of each pair as the file defines it, or None (view-1 files).
    """

    images: list[str]
    pairs: np.ndarray
    same: np.ndarray
    folds: np.ndarray | None


def image_path(name: str, number: int) -> str:
    """The relative path of image `number` of `name`: `name/name_0001.jpg`."""
    return f"{name}/{name}_{number:04d}.jpg"


def find_images_dir(lfw_dir: str | os.PathLike) -> Path:
    """The folder of per-person image folders inside an LFW folder (see `IMAGE_FOLDERS`).

    Raises:
        DatasetError: none of the known folders exists.
    """
    lfw_dir = Path(lfw_dir)
    for name in IMAGE_FOLDERS:
        if (lfw_dir / name).is_dir():
            return lfw_dir / name
    raise DatasetError(f"no LFW image folder in '{lfw_dir}': expected one of {', '.join(IMAGE_FOLDERS)} "
                       "(pass --images-dir to name it)")


def read_pairs(path: str | os.PathLike) -> PairList:
    """Parse an LFW pair file (either format, see the module docstring).

    Args:
        path: the pair file.

    Returns:
        A `PairList`; `folds` is set for a `SETS N` header, None for an `N` header.

    Raises:
        DatasetError: the file is missing or unreadable, a line is malformed (the message gives its
            number), or the number of pairs differs from what the header announces.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"cannot read pair file '{path}': {e.strerror or e}") from e
    numbered = [(n, line.split()) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise DatasetError(f"pair file '{path}' is empty")
    header_line, header = numbered[0]
    if not all(field.isdigit() for field in header) or len(header) not in (1, 2):
        raise DatasetError(f"{path}:{header_line}: expected a header 'SETS PAIRS' (pairs.txt) or 'PAIRS' "
                           f"(pairsDevTest.txt), got '{lines[header_line - 1].strip()}'")
    sets, per_kind = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    body = numbered[1:]
    if len(body) != 2 * sets * per_kind:
        raise DatasetError(f"pair file '{path}' announces {sets} x 2 x {per_kind} = {2 * sets * per_kind} pairs "
                           f"(line {header_line}) but holds {len(body)}")
    named = [_parse_pair(path, n, fields) for n, fields in body]
    images = sorted({p for pair in named for p in pair})
    position = {p: i for i, p in enumerate(images)}
    pairs = np.array([[position[a], position[b]] for a, b in named], np.int64).reshape(-1, 2)
    same = np.array([len(fields) == 3 or fields[0] == fields[2] for _, fields in body], bool)
    folds = np.arange(len(body), dtype=np.int64) // (2 * per_kind) if len(header) == 2 else None
    return PairList(images, pairs, same, folds)


def _parse_pair(path: Path, line: int, fields: list[str]) -> tuple[str, str]:
    try:
        if len(fields) == 3:
            return image_path(fields[0], _number(fields[1])), image_path(fields[0], _number(fields[2]))
        if len(fields) == 4:
            return image_path(fields[0], _number(fields[1])), image_path(fields[2], _number(fields[3]))
    except ValueError:
        pass
    raise DatasetError(f"{path}:{line}: expected 'name n1 n2' or 'name1 n1 name2 n2' with image numbers "
                       f">= 1, got '{' '.join(fields)}'")


def _number(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


# Extensions tried for each image of a pair file, in this order (LFW ships .jpg; aligned crops are often .png).
PAIR_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def locate_images(pair_list: PairList, root: str | os.PathLike) -> list[str]:
    """The file of each image of a pair list under `root` (`root/<name>/<name>_<nnnn>.jpg|png|jpeg`).

    Args:
        pair_list: from `read_pairs`.
        root: the folder of per-person image folders.

    Returns:
        One path per `pair_list.images` entry, in the same order.

    Raises:
        DatasetError: `root` is not a folder, or some images are missing (the message names a few).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"pair image folder '{root}' does not exist; expected <root>/<name>/<name>_0001.jpg|png")
    found, missing = [], []
    for relative in pair_list.images:
        stem = str(root / relative.removesuffix(".jpg"))  # a suffix of its own: names hold dots (A.J._Cook)
        path = next((stem + s for s in PAIR_IMAGE_SUFFIXES if os.path.isfile(stem + s)), None)
        found.append(path)
        if path is None:
            missing.append(relative)
    if missing:
        raise DatasetError(f"{len(missing)} of {len(found)} pair images are missing under '{root}', e.g. "
                           f"{', '.join(missing[:3])} (tried {'/'.join(PAIR_IMAGE_SUFFIXES)}): "
                           "pass the folder of aligned crops laid out as LFW is")
    return found
