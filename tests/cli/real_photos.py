"""A small gallery of real photos (scikit-image's public-domain ones) with the cases a run must survive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WITH_FACE = ["eileen/astronaut.png", "eileen/grey.png", "eileen/mirrored.jpg", "eileen/small.png", "group.png"]
WITHOUT_FACE = ["cat/chelsea.png", "cup/coffee.png"]
UNREADABLE = ["broken/bad.jpg"]


def make_real_gallery(root: Path) -> Path:
    """`root` with: 4 photos of Eileen Collins (`astronaut`, as sent in several forms), `group.png`
    (her and the cameraman side by side: two faces, identity `group` by the stem rule), a cat and
    a cup (no face), a file that is not an image, and a text file (ignored)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the photos: pip install scikit-image")
    astronaut = data.astronaut()
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    for name in ("eileen", "cat", "cup", "broken"):
        (root / name).mkdir(parents=True, exist_ok=True)
    Image.fromarray(astronaut).save(root / "eileen" / "astronaut.png")
    Image.fromarray(astronaut).convert("L").save(root / "eileen" / "grey.png")
    Image.fromarray(astronaut[:, ::-1]).save(root / "eileen" / "mirrored.jpg", quality=92)
    Image.fromarray(astronaut).resize((256, 256), Image.Resampling.LANCZOS).save(root / "eileen" / "small.png")
    Image.fromarray(np.concatenate([astronaut, camera], axis=1)).save(root / "group.png")
    Image.fromarray(data.chelsea()).save(root / "cat" / "chelsea.png")
    Image.fromarray(data.coffee()).save(root / "cup" / "coffee.png")
    (root / "broken" / "bad.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG at all")
    (root / "broken" / "notes.txt").write_text("not a photo")
    return root
