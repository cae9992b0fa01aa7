"""The photo store: photos enrolled through the service, kept inside the index folder by content.

A photo's file is named by the sha256 of its bytes (`photos/ab/abcdef....jpg`), so the same
bytes are stored once however often they are enrolled, and a rebuild of the index (a new model,
another crop method) can embed every enrolled photo again from here (`facesearch.index.sync.enrolled`).

An enrolled photo's metadata row (`facesearch.index.storage.store`, source "api") has the path
`.enrolled/<identity>/<sha256><ext>`: a name no gallery-folder photo can have (a folder build
ignores hidden folders), unique per identity and photo, from which the stored file is found.

Files are written (fsynced, renamed) before the commit that names them; they are deleted only
after a commit that leaves no live row naming them. A crash between the two leaves a file that
no row names: `sweep` removes those, under the index's write lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from facesearch.embedder.core.atomic import atomic_write_bytes

STORE_DIR = "photos"
ENROLLED_PREFIX = ".enrolled/"
# Pillow's format name -> the extension a stored photo gets (anything else: ".img").
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
              "TIFF": ".tif"}
_STORED = re.compile(r"^([0-9a-f]{64})(\.[a-z]{2,4})$")


def extension_of(image_format: str | None) -> str:
    """The stored file's extension for a Pillow format name (e.g. "JPEG" -> ".jpg")."""
    return EXTENSIONS.get(image_format or "", ".img")


def enrolled_path(identity: str, sha256: str, ext: str) -> str:
    """The metadata path of a photo enrolled under `identity` (see the module notes)."""
    return f"{ENROLLED_PREFIX}{identity}/{sha256}{ext}"


def parse_enrolled_path(path: str) -> tuple[str, str, str] | None:
    """(identity, sha256, ext) of an enrolled photo's metadata path; None for a gallery-folder path."""
    if not path.startswith(ENROLLED_PREFIX):
        return None
    identity, _, name = path[len(ENROLLED_PREFIX):].rpartition("/")
    m = _STORED.match(name)
    return (identity, m.group(1), m.group(2)) if m and identity else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PhotoStore:
    """Enrolled photos by content, under `<index_dir>/photos/`."""

    def __init__(self, index_dir: str | os.PathLike):
        self.root = Path(index_dir) / STORE_DIR

    def path(self, sha256: str, ext: str) -> Path:
        """Where the photo with these bytes is (or would be) stored."""
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def path_of(self, enrolled: str) -> Path | None:
        """The stored file of an enrolled photo's metadata path, or None for a folder photo's path."""
        parsed = parse_enrolled_path(enrolled)
        return None if parsed is None else self.path(parsed[1], parsed[2])

    def put(self, data: bytes, ext: str, sha256: str | None = None) -> str:
        """Store `data` (once: the same bytes are kept once), durably; returns its sha256."""
        sha256 = sha256 or sha256_bytes(data)
        target = self.path(sha256, ext)
        if not (target.is_file() and target.stat().st_size == len(data)):
            atomic_write_bytes(target, data)  # temporary file, fsync, rename, fsync of the folder
        return sha256

    def has(self, sha256: str, ext: str) -> bool:
        return self.path(sha256, ext).is_file()

    def remove(self, sha256: str, ext: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256, ext).unlink()

    def stored(self) -> dict[str, Path]:
        """Every stored photo, by sha256."""
        out: dict[str, Path] = {}
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            if folder.is_dir():
                for f in folder.iterdir():
                    if (m := _STORED.match(f.name)) is not None:
                        out[m.group(1)] = f
        return out

    def sweep(self, live: set[str]) -> list[str]:
        """Delete stored photos whose sha256 is not in `live` (and leftover temporary files).

        Call it holding the index's write lock, with the sha256 of every live enrolled photo.
        """
        removed = []
        for sha256, path in self.stored().items():
            if sha256 not in live:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(sha256)
        if self.root.is_dir():
            for leftover in self.root.glob("*/.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        return removed
