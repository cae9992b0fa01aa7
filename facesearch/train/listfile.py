"""List-file datasets (`relative/path.jpg label` per line, CASIA-WebFace-112X96.txt style)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facesearch.embedder.core.errors import DatasetError
from facesearch.train.data import FolderDataset

# Bad lines quoted in the error message; the count of the rest is given.
MAX_REPORTED_LINES = 10


def parse_list_file(list_file: str | os.PathLike, image_root: str | os.PathLike) -> FolderDataset:
    """Read a list file of `relative/path.jpg label` lines into a dataset with dense labels.

    Blank lines and lines starting with `#` are ignored. A path may contain spaces: the label is
    the last whitespace-separated field. Labels are any strings (CASIA uses integers, which are
    then ordered numerically, not as text); they are remapped to `0..C-1` in sorted order, and
    `class_names[i]` keeps the original label of class `i`, so `save_labels` records the mapping.
    Images are not opened here: unreadable files are found later (`data.find_unreadable`).

    Args:
        list_file: the text file.
        image_root: folder the relative paths are resolved against.

    Returns:
        The dataset, images in file order.

    Raises:
        DatasetError: the file is missing or empty, or has malformed lines (each reported with
            its 1-based line number).
    """
    list_file, root = Path(list_file), Path(image_root)
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read list file '{list_file}': {e}") from e
    if not root.is_dir():
        raise DatasetError(f"image root '{root}' for list file '{list_file}' is not a folder")
    paths, raw_labels, bad = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2:
            bad.append(f"line {number}: expected 'relative/path.jpg label', got {line!r}")
            continue
        rel, label = fields
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            bad.append(f"line {number}: path must be relative to the image root, got {rel!r}")
            continue
        paths.append(str(root / rel))
        raw_labels.append(label)
    if bad:
        more = f" (and {len(bad) - MAX_REPORTED_LINES} more)" if len(bad) > MAX_REPORTED_LINES else ""
        raise DatasetError(f"list file '{list_file}' has {len(bad)} malformed line(s){more}:\n  "
                           + "\n  ".join(bad[:MAX_REPORTED_LINES]))
    if not paths:
        raise DatasetError(f"list file '{list_file}' lists no images; expected 'relative/path.jpg label' lines")
    labels, class_names = remap_labels(raw_labels)
    return FolderDataset(tuple(paths), labels, class_names)


def remap_labels(raw: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map arbitrary label strings to dense `0..C-1`.

    Args:
        raw: `n` labels as written in the file.

    Returns:
        `(labels, class_names)`: `(n,)` int32 dense labels and the `C` distinct originals, sorted
        numerically when every label is an integer, else as text; `class_names[labels[i]] == raw[i]`.
    """
    distinct = set(raw)
    try:
        names = sorted(distinct, key=int)
    except ValueError:
        names = sorted(distinct)
    index = {name: i for i, name in enumerate(names)}
    return np.asarray([index[r] for r in raw], np.int32), tuple(names)
