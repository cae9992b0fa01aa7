"""A ROC curve as a PNG, drawn with Pillow: true accept rate against false accept rate on a log axis.

Pillow (already a dependency) rather than matplotlib: one plot does not justify a ~40 MB
dependency tree on the query-path install.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facesearch.embedder.core.atomic import atomic_path

WIDTH, HEIGHT = 720, 540
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 30, 50, 60
CURVE = (31, 119, 180)
MARK = (214, 39, 40)
GRID = (225, 225, 225)


def write_roc_png(path: str | os.PathLike, far: np.ndarray, tar: np.ndarray, *, title: str,
                  marks: Sequence[tuple[float, float, str]] = (), negatives: int | None = None) -> None:
    """Draw a ROC curve and write it atomically as a PNG.

    Args:
        path: the PNG file to write.
        far: `(u,)` false accept rates, non-decreasing (`facesearch.embedder.evaluation.metrics.roc_curve`).
        tar: `(u,)` true accept rates.
        title: text above the plot.
        marks: `(far, tar, label)` operating points to mark.
        negatives: number of negative pairs; the x axis starts at the decade below 1 / negatives
            (the smallest non-zero FAR), else at the smallest non-zero `far`.
    """
    far, tar = np.asarray(far, np.float64), np.asarray(tar, np.float64)
    smallest = 1.0 / negatives if negatives else (far[far > 0].min() if np.any(far > 0) else 1e-3)
    lo = math.floor(math.log10(smallest)) if smallest < 1 else -1
    box = (MARGIN_LEFT, MARGIN_TOP, WIDTH - MARGIN_RIGHT, HEIGHT - MARGIN_BOTTOM)

    def xy(f: float, t: float) -> tuple[float, float]:
        fx = (math.log10(max(f, 10.0 ** lo)) - lo) / -lo
        return box[0] + fx * (box[2] - box[0]), box[3] - t * (box[3] - box[1])

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    for e in range(lo, 1):
        x, _ = xy(10.0 ** e, 0)
        draw.line([(x, box[1]), (x, box[3])], fill=GRID)
        draw.text((x, box[3] + 6), f"1e{e}" if e else "1", fill="black", font=font, anchor="mt")
    for t in np.linspace(0, 1, 6):
        _, y = xy(1, t)
        draw.line([(box[0], y), (box[2], y)], fill=GRID)
        draw.text((box[0] - 6, y), f"{t:.1f}", fill="black", font=font, anchor="rm")
    draw.rectangle(box, outline="black")
    # Points left of the first decade (FAR 0 included) are drawn on the axis itself.
    points = [xy(f, t) for f, t in zip(far, tar) if f > 0]
    first = float(tar[far <= 10.0 ** lo].max()) if np.any(far <= 10.0 ** lo) else 0.0
    draw.line([xy(10.0 ** lo, first)] + points, fill=CURVE, width=2)
    for n, (f, t, label) in enumerate(marks):
        x, y = xy(f, t)
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=MARK, width=2)
        draw.text((x + 8, y + 4 + 16 * n), label, fill=MARK, font=font, anchor="lt")  # stacked: points may coincide
    draw.text((WIDTH / 2, 20), title, fill="black", font=font, anchor="mm")
    draw.text(((box[0] + box[2]) / 2, HEIGHT - 18), "false accept rate (log scale)", fill="black", font=font,
              anchor="mm")
    label = Image.new("RGB", (200, 20), "white")
    ImageDraw.Draw(label).text((100, 10), "true accept rate", fill="black", font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (8, (box[1] + box[3]) // 2 - 100))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
