"""Walk a gallery folder: image files, their identities, and what changed since the last build.

Identity rule, from the folder layout:

- `DIR/<identity>/photo.jpg` -> `<identity>` (the usual layout);
- `DIR/photo.jpg` (directly in DIR) -> the file stem, `photo`;
- `DIR/<identity>/any/depth/photo.jpg` -> `<identity>`: only the first folder level names the
  person, deeper folders (sessions, years, ...) are just grouping.

Hidden files and folders (names starting with `.`) are ignored, as are files without an image
extension (counted as `ignored`). Symbolic links to files are followed; links to folders are not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from facesearch.embedder.core.constants import IMAGE_EXTENSIONS
from facesearch.embedder.core.errors import DatasetError
from facesearch.index.storage.store import Photo


@dataclass(frozen=True)
class ScannedFile:
    """An image file found in the gallery folder, with its size and mtime at scan time."""

    path: str  # relative to the gallery folder, '/'-separated
    identity: str
    size: int
    mtime_ns: int


@dataclass
class Scan:
    """The image files of a gallery folder, sorted by relative path."""

    root: Path
    files: list[ScannedFile]
    ignored: int  # files without an image extension


@dataclass
class Plan:
    """How a scan differs from the photos already indexed.

    `unchanged` photos keep their vectors untouched; `touched` ones have a new size or mtime and
    must be checksummed to tell whether their content changed; `new` ones must be embedded;
    `removed` paths are indexed photos no longer in the folder.
    """

    unchanged: list[ScannedFile] = field(default_factory=list)
    touched: list[ScannedFile] = field(default_factory=list)
    new: list[ScannedFile] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def identity_of(rel_path: str) -> str:
    """The identity a relative POSIX path belongs to (see the module docstring)."""
    parts = PurePosixPath(rel_path).parts
    return parts[0] if len(parts) > 1 else PurePosixPath(rel_path).stem


def scan_folder(root: str | os.PathLike) -> Scan:
    """List the image files under `root`, sorted by relative path for a stable order.

    Raises:
        DatasetError: `root` is missing, not a folder, or holds no image files.
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"gallery folder '{root}' does not exist")
    if not root.is_dir():
        raise DatasetError(f"gallery path '{root}' is not a folder: pass a folder of "
                           "<identity>/<photo>.jpg subfolders")
    files: list[ScannedFile] = []
    ignored = 0
    for folder, dirs, names in os.walk(root, onerror=_raise_walk_error):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                ignored += 1
                continue
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except OSError:  # a dangling link or a file deleted during the walk
                continue
            rel = Path(full).relative_to(root).as_posix()
            files.append(ScannedFile(rel, identity_of(rel), st.st_size, st.st_mtime_ns))
    if not files:
        exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        raise DatasetError(f"no image files ({exts}) in '{root}'"
                           + (f" ({ignored} other files ignored)" if ignored else "")
                           + ": expected <identity>/<photo>.jpg subfolders")
    files.sort(key=lambda f: f.path)
    return Scan(root, files, ignored)


def _raise_walk_error(e: OSError) -> None:
    raise DatasetError(f"cannot list folder '{e.filename}': {e.strerror}") from e


def plan_update(files: list[ScannedFile], indexed: Mapping[str, Photo]) -> Plan:
    """Compare scanned files with indexed photos by path, size and mtime (content is not read)."""
    plan = Plan()
    for f in files:
        old = indexed.get(f.path)
        if old is None:
            plan.new.append(f)
        elif (old.size, old.mtime_ns) == (f.size, f.mtime_ns):
            plan.unchanged.append(f)
        else:
            plan.touched.append(f)
    seen = {f.path for f in files}
    plan.removed = sorted(p for p in indexed if p not in seen)
    return plan
