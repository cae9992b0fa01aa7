"""A face box, (x1, y1, x2, y2) in the photo's pixels, as the index stores it and as answers print it."""

from __future__ import annotations

from collections.abc import Iterable

Box = tuple[float, float, float, float]


def box_tuple(box: Iterable[float] | None) -> Box | None:
    """A box as a tuple of Python floats (numpy scalars in, plain floats out); None stays None."""
    return None if box is None else tuple(float(v) for v in box)


def box_list(box: Iterable[float] | None) -> list[float] | None:
    """A box as a list of Python floats, the form `--json` prints; None stays None."""
    return None if box is None else [float(v) for v in box]
