"""dlib's 5-point face landmark predictor (an ensemble of regression trees), read and run in numpy.

`shape_predictor_5_face_landmarks.dat` (package `face-recognition-models`, CC0 1.0) is dlib's
`serialize(shape_predictor)` (dlib/image_processing/shape_predictor.h): Kazemi & Sullivan, "One
Millisecond Face Alignment with an Ensemble of Regression Trees", CVPR 2014. Every integer and float
of the file uses dlib's encodings (facesearch.embedder.dlib.weights, ../shared/notes/dlib-resnet.md):

    int version (1)
    matrix<float,0,1> initial_shape         -nr, -nc, then nr*nc floats: x0, y0, x1, y1, ... in [0, 1]
    vector<vector<regression_tree>> forests  one forest per cascade; a tree is
        vector<split_feature> splits          idx1, idx2 (ints), thresh (float); node i's children 2i+1, 2i+2
        vector<matrix<float,0,1>> leaf_values one shape increment per leaf (learning rate included)
    vector<vector<unsigned long>> anchor_idx  per cascade and feature pixel: the shape point it hangs on
    vector<vector<vector<float,2>>> deltas   its offset from that point, in the initial shape's frame

`ShapePredictor.predict` reproduces `dlib.shape_predictor(image, rect)` to the pixel: per cascade,
the similarity from the initial shape to the current one places the feature pixels, which are read
as dlib's intensity ((r + g + b) // 3, 0 outside the photo) at the rounded position; every tree of
the cascade descends on those values at once, and the leaves are added in dlib's order (float32).
Imports no TensorFlow and no dlib.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.embedder.dlib.weights import find_weights_file

SHAPE_FILE = "shape_predictor_5_face_landmarks.dat"
# sha256 of the file shipped by face-recognition-models 0.3.0.
SHAPE_SHA256 = "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
_SPECIAL_EXPONENTS = (32000, 32001, 32002)  # dlib's float_details: inf, -inf, nan


@dataclass(frozen=True)
class ShapePredictor:
    """A parsed dlib shape predictor; all trees of all cascades have one depth.

    Attributes:
        initial_shape: (2p,) float32, dlib's mean shape x0, y0, x1, y1, ... in the unit box.
        idx1, idx2: (cascades, trees, splits) int64 feature indices compared at each split node.
        thresh: (cascades, trees, splits) float32; a node goes left when f[idx1] - f[idx2] > thresh.
        leaf_values: (cascades, trees, leaves, 2p) float32 shape increments (unit-box coordinates).
        anchor_idx: (cascades, features) int64: the shape point each feature pixel hangs on.
        deltas: (cascades, features, 2) float32: its offset from that point in the initial shape.
    """

    initial_shape: np.ndarray
    idx1: np.ndarray
    idx2: np.ndarray
    thresh: np.ndarray
    leaf_values: np.ndarray
    anchor_idx: np.ndarray
    deltas: np.ndarray

    def __post_init__(self):
        # Per cascade, flat arrays for the descent: node k of tree t is entry t * splits + k, leaf j
        # of tree t is row t * leaves + j. Every split of every tree is decided at once; with at
        # most 16 splits a tree's decisions, as bits, index a table of the leaf they lead to.
        c, t, n = self.idx1.shape
        object.__setattr__(self, "_flat", [
            (self.idx1[i].ravel(), self.idx2[i].ravel(), self.thresh[i].ravel(),
             self.leaf_values[i].reshape(t * (n + 1), -1), np.ascontiguousarray(self.deltas[i, :, 0]),
             np.ascontiguousarray(self.deltas[i, :, 1]), 2 * self.anchor_idx[i], 2 * self.anchor_idx[i] + 1)
            for i in range(c)])
        codes = np.arange(1 << n if n <= 16 else 1)
        node = np.zeros_like(codes)
        for _ in range(int(np.log2(n + 1))):
            node = 2 * node + 2 - ((codes >> node) & 1)  # bit k set: node k sends it left (2k + 1)
        object.__setattr__(self, "_leaf_table", node - n if n <= 16 else None)
        object.__setattr__(self, "_rows", np.arange(t) * (n + 1))

    @property
    def num_parts(self) -> int:
        return self.initial_shape.size // 2

    @property
    def tree_depth(self) -> int:
        return int(np.log2(self.leaf_values.shape[2]))

    def predict(self, image: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
        """The landmarks dlib's predictor finds in `rect`: `dlib.shape_predictor(image, rect)`.

        Args:
            image: (H, W) or (H, W, 3) uint8 (grey or RGB).
            rect: (left, top, right, bottom) integer pixel coordinates, dlib's inclusive rectangle
                (e.g. a dlib.rectangle's left(), top(), right(), bottom()).

        Returns:
            (num_parts, 2) int64 (x, y), rounded as dlib rounds.

        Raises:
            ValueError: the image is not uint8 grey or RGB.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
        left, top, right, bottom = (int(v) for v in rect)
        width, height = float(right - left), float(bottom - top)  # dlib maps the unit box onto these
        h, w = image.shape[:2]
        pixels = image.reshape(h * w, -1)
        shape = self.initial_shape
        for idx1, idx2, thresh, leaves, dx, dy, anchor_x, anchor_y in self._flat:
            m = _similarity_2x2(self.initial_shape, shape)
            # dlib: tform * delta + location, in float32; then to pixels in double, rounded half up
            px = (m[0, 0] * dx + m[0, 1] * dy) + shape[anchor_x]
            py = (m[1, 0] * dx + m[1, 1] * dy) + shape[anchor_y]
            x = np.floor(left + width * px.astype(np.float64) + 0.5).astype(np.int64)
            y = np.floor(top + height * py.astype(np.float64) + 0.5).astype(np.int64)
            inside = (x >= 0) & (y >= 0) & (x < w) & (y < h)
            values = pixels[np.where(inside, y * w + x, 0)]
            values = values.sum(axis=1, dtype=np.uint16) // 3 if values.shape[1] == 3 else values[:, 0]
            feats = np.where(inside, values, 0).astype(np.float32)  # dlib's intensity, 0 off the photo
            go_left = feats[idx1] - feats[idx2] > thresh
            leaf = leaves[self._rows + self._descend(go_left)]
            # dlib adds tree after tree into a float32 shape: a sequential sum (np.sum pairs terms up)
            leaf[0] += shape
            shape = np.cumsum(leaf, axis=0)[-1]
        points = shape.reshape(-1, 2).astype(np.float64) * [width, height] + [left, top]
        return np.floor(points + 0.5).astype(np.int64)

    def predict_many(self, images: Sequence[np.ndarray], rects: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
        """`predict` of several faces at once (of one photo or of several): the same points, to the bit.

        Every step but reading the feature pixels runs on all faces together, so a chunk of photos
        costs a few dozen numpy calls per cascade instead of that many per face.

        Args:
            images: the photo of each face (the same array may appear several times), each
                (H, W) or (H, W, 3) uint8.
            rects: each face's (left, top, right, bottom), as `predict` takes it.

        Returns:
            (faces, num_parts, 2) int64 (x, y).

        Raises:
            ValueError: an image is not uint8 grey or RGB, or the two lists differ in length.
        """
        if len(images) != len(rects):
            raise ValueError(f"{len(images)} images for {len(rects)} rectangles")
        n = len(rects)
        if n == 0:
            return np.empty((0, self.num_parts, 2), np.int64)
        # The photos' pixels laid end to end (as RGB; grey ones repeated), so that one gather per cascade
        # serves every face: a face's pixel (x, y) is row offset + y * w + x; the last row, black, is
        # what a point off its photo reads.
        rows, offsets, sizes, seen = [], np.empty(n, np.int64), np.empty((n, 2), np.int64), {}
        start = 0
        for k, image in enumerate(images):
            if id(image) not in seen:
                image = np.asarray(image)
                if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
                    raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
                seen[id(images[k])] = start
                flat = image.reshape(-1, image.shape[2] if image.ndim == 3 else 1)
                rows.append(flat if flat.shape[1] == 3 else np.repeat(flat, 3, axis=1))
                start += len(flat)
            offsets[k], sizes[k] = seen[id(images[k])], np.shape(images[k])[:2]
        pixels = np.concatenate(rows + [np.zeros((1, 3), np.uint8)])
        outside = len(pixels) - 1
        h, w = sizes[:, 0:1], sizes[:, 1:2]
        box = np.array([[int(v) for v in r] for r in rects], np.int64)
        left, top = box[:, 0:1].astype(np.float64), box[:, 1:2].astype(np.float64)
        width, height = (box[:, 2:3] - box[:, 0:1]).astype(np.float64), (box[:, 3:4] - box[:, 1:2]).astype(np.float64)
        shape = np.tile(self.initial_shape, (n, 1))
        for idx1, idx2, thresh, leaves, dx, dy, anchor_x, anchor_y in self._flat:
            m = _similarity_2x2_many(self.initial_shape, shape)  # (n, 2, 2) float32
            px = (m[:, 0, 0, None] * dx + m[:, 0, 1, None] * dy) + shape[:, anchor_x]
            py = (m[:, 1, 0, None] * dx + m[:, 1, 1, None] * dy) + shape[:, anchor_y]
            xs = np.floor(left + width * px.astype(np.float64) + 0.5).astype(np.int64)
            ys = np.floor(top + height * py.astype(np.float64) + 0.5).astype(np.int64)
            inside = (xs >= 0) & (ys >= 0) & (xs < w) & (ys < h)
            rgb = np.take(pixels, np.where(inside, offsets[:, None] + ys * w + xs, outside), axis=0)  # (take: ~5x
            # faster than indexing with [] for row gathers)
            feats = (rgb.sum(axis=2, dtype=np.uint16) // 3).astype(np.float32)  # dlib's intensity
            go_left = np.take(feats, idx1, axis=1) - np.take(feats, idx2, axis=1) > thresh
            leaf = np.take(leaves, (self._rows + self._descend(go_left)).T, axis=0)  # (trees, n, 2p)
            leaf[0] += shape
            # dlib adds tree after tree into a float32 shape. Reduced over its outer axis, numpy adds
            # the rows in order too (pairwise summation is for the inner axis): the same bits as
            # `predict`'s cumsum, far faster (a test holds the two equal).
            shape = np.add.reduce(leaf, axis=0)
        points = shape.reshape(n, -1, 2).astype(np.float64) * np.stack([width, height], axis=2) \
            + np.stack([left, top], axis=2)
        return np.floor(points + 0.5).astype(np.int64)

    def _descend(self, go_left: np.ndarray) -> np.ndarray:
        """(..., trees) leaf index of each tree, from (..., trees * splits) bool split decisions."""
        trees, splits = self.idx1.shape[1:]
        bits = go_left.reshape(*go_left.shape[:-1], trees, splits)
        if self._leaf_table is not None:
            return self._leaf_table[bits.astype(np.int64) @ (1 << np.arange(splits))]
        node = np.zeros(bits.shape[:-1], np.int64)
        for _ in range(self.tree_depth):
            node = 2 * node + 2 - np.take_along_axis(bits, node[..., None], axis=-1)[..., 0]
        return node - splits


def intensity(image: np.ndarray) -> np.ndarray:
    """dlib's pixel intensity: the grey value, or (r + g + b) // 3 of an RGB pixel; (H, W) uint8.

    Raises:
        ValueError: the image is not uint8 (H, W) or (H, W, 3).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected a uint8 (H, W) or (H, W, 3) image, got {image.dtype} {image.shape}")
    if image.ndim == 2:
        return image
    return (image.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)


def _similarity_2x2(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The linear part of dlib's find_similarity_transform(src -> dst), as float32 (2, 2).

    dlib solves it with Umeyama's SVD in double; for 2-D points the rotation-and-scale it finds
    has this closed form (a, -b; b, a), equal to double rounding before the cast to float32.
    Plain Python floats: for 5 points they beat numpy's per-call overhead several times over.
    """
    xs, ys = src[0::2].tolist(), src[1::2].tolist()
    us, vs = dst[0::2].tolist(), dst[1::2].tolist()
    n = len(xs)
    mx, my, mu, mv = sum(xs) / n, sum(ys) / n, sum(us) / n, sum(vs) / n
    sigma = dot = cross = 0.0
    for x, y, u, v in zip(xs, ys, us, vs):
        x, y, u, v = x - mx, y - my, u - mu, v - mv
        sigma += x * x + y * y
        dot += x * u + y * v
        cross += x * v - y * u
    if sigma == 0:
        return np.eye(2, dtype=np.float32)
    a, b = dot / sigma, cross / sigma
    return np.array([[a, -b], [b, a]], dtype=np.float32)


def _similarity_2x2_many(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """`_similarity_2x2(src, dst[k])` for every row k of dst (n, 2p): (n, 2, 2) float32, the same bits.

    The same double-precision operations in the same order: numpy sums the 5 terms of a row one
    after another, as Python's loop does.
    """
    xs, ys = src[0::2].astype(np.float64), src[1::2].astype(np.float64)
    us, vs = dst[:, 0::2].astype(np.float64), dst[:, 1::2].astype(np.float64)
    x, y = xs - xs.sum() / xs.size, ys - ys.sum() / ys.size
    u = us - us.sum(axis=1, keepdims=True) / xs.size
    v = vs - vs.sum(axis=1, keepdims=True) / xs.size
    sigma = float((x * x + y * y).sum())
    out = np.empty((len(dst), 2, 2), np.float32)
    if sigma == 0:
        out[:] = np.eye(2, dtype=np.float32)
        return out
    a = (x * u + y * v).sum(axis=1) / sigma
    b = (x * v - y * u).sum(axis=1) / sigma
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = a, -b, b, a
    return out


def _int_stream(data: bytes, source: str) -> np.ndarray:
    """Every integer of a file made only of dlib integers (as the shape predictor is), int64.

    Each control byte says how many bytes follow it, so the integers' starts form a chain from
    byte 0. Walking it in Python takes ~1.5 s for the 5-point file's 3.2 million integers; instead,
    every byte is taken as a possible start and followed 64 steps (by repeated squaring of the
    next-start map): such paths fall onto the true chain within a few steps, so the positions they
    reach, plus the chain's first 64 starts, are the chain. The result is checked link by link;
    while a path has not merged, the steps double (up to 4096, then `_walk_starts`).
    """
    end = len(data)
    if end == 0:
        raise ModelSpecError(f"'{source}' is empty: not a dlib shape predictor")
    buf = np.frombuffer(data + bytes(9), np.uint8)
    nxt = np.minimum(np.arange(1, end + 1, dtype=np.int32) + (buf[:end] & 0x0F), end)
    nxt = np.append(nxt, np.int32(end))  # `end` maps to itself
    jump, steps, starts = nxt, 1, None
    while steps < 1 << 12:
        jump, steps = jump[jump], 2 * steps
        if steps < 64:
            continue
        on_chain = np.zeros(end + 1, bool)
        on_chain[jump] = True  # every chain start from the steps-th on, perhaps a few strays
        pos = 0
        for _ in range(steps):
            on_chain[pos] = True
            pos = int(nxt[pos])
        on_chain[end] = False
        starts = np.flatnonzero(on_chain)
        if starts[0] == 0 and np.array_equal(nxt[starts[:-1]], starts[1:]):
            break
        starts = None
    starts = _walk_starts(data) if starts is None else starts.astype(np.int64)
    control = buf[starts]
    lengths = (control & 0x0F).astype(np.int64)
    if starts[-1] + 1 + lengths[-1] != end or np.any(control & 0x70) or np.any(lengths > 8) or np.any(lengths == 0):
        raise ModelSpecError(f"'{source}' is not a dlib shape predictor as expected: not a sequence of dlib integers")
    if np.any((lengths == 8) & (buf[starts + 8] & 0x80 != 0)):
        raise ModelSpecError(f"'{source}' is not a dlib shape predictor as expected: an integer beyond int64")
    values = np.zeros(starts.size, np.int64)
    for k in range(8):
        byte = buf[starts + 1 + k].astype(np.int64)
        values |= np.where(k < lengths, byte, 0) << (8 * k)
    return np.where(control & 0x80, -values, values)


def _walk_starts(data: bytes) -> np.ndarray:
    """The integers' start bytes, walked one by one (the reference for `_int_stream`'s shortcut)."""
    starts, pos, end = [], 0, len(data)
    while pos < end:
        starts.append(pos)
        pos += 1 + (data[pos] & 0x0F)
    return np.asarray(starts, np.int64)


class _Ints:
    """A cursor over the integer stream, with dlib's composite encodings."""

    def __init__(self, values: np.ndarray, source: str):
        self.values, self.pos, self.source = values, 0, source

    def fail(self, what: str) -> ModelSpecError:
        return ModelSpecError(f"'{self.source}' is not a dlib shape predictor as expected: {what} "
                              f"(at integer {self.pos})")

    def take(self, n: int) -> np.ndarray:
        if self.pos + n > self.values.size:
            raise self.fail(f"file ends early (wanted {n} more integers)")
        out = self.values[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return int(self.take(1)[0])

    def size(self, expected: int | None = None, what: str = "vector") -> int:
        n = self.int()
        if n < 0 or (expected is not None and n != expected):
            raise self.fail(f"{what} of size {n}" + (f" (expected {expected})" if expected is not None else ""))
        return n

    def floats(self, pairs: np.ndarray) -> np.ndarray:
        """float32 values from (..., 2) (mantissa, exponent) integer pairs."""
        if np.any(np.isin(pairs[..., 1], _SPECIAL_EXPONENTS)):
            raise self.fail("an infinite or NaN value")
        return np.ldexp(pairs[..., 0].astype(np.float64), pairs[..., 1]).astype(np.float32)

    def column(self, nr: int | None = None) -> tuple[int, np.ndarray]:
        """A matrix<float,0,1>: (nr, values)."""
        rows, cols = -self.int(), -self.int()  # dlib writes the dimensions negated
        if cols != 1 or rows < 1 or (nr is not None and rows != nr):
            raise self.fail(f"a {rows}x{cols} matrix where a column of {nr or 'n'} floats was expected")
        return rows, self.floats(self.take(2 * rows).reshape(rows, 2))


def parse_shape_predictor(data: bytes, source: str = "shape predictor") -> ShapePredictor:
    """Parse the bytes of a serialised dlib shape_predictor (see the module docstring).

    Raises:
        ModelSpecError: the structure is not dlib's, the trees are not all full and of one depth,
            an index is out of range, or bytes are left over.
    """
    r = _Ints(_int_stream(data, source), source)
    if (version := r.int()) != 1:
        raise r.fail(f"version {version} (expected 1)")
    n2, initial = r.column()
    cascades = r.size(what="forest list")
    # Every tree is stored as [S, S x (idx1, idx2, mantissa, exponent), L, L x (-nr, -nc, nr x
    # (mantissa, exponent))]; the first tree gives S and L, and all must match it (one depth is
    # what the vectorised descent needs), so the forests are read as one block.
    start = r.pos
    trees, splits = r.size(what="forest"), r.size(what="split list")
    r.take(4 * splits)
    n_leaves = r.size(splits + 1, "leaf list")
    r.pos = start
    if n_leaves & splits:
        raise r.fail(f"a tree of {splits} splits is not a full binary tree")
    per_tree = 2 + 4 * splits + n_leaves * (2 + 2 * n2)
    block = r.take(cascades * (1 + trees * per_tree)).reshape(cascades, 1 + trees * per_tree)
    forest = block[:, 1:].reshape(cascades, trees, per_tree)
    layout = forest[:, :, [0, 1 + 4 * splits]]
    leaves = forest[:, :, 2 + 4 * splits:].reshape(cascades, trees, n_leaves, 2 + 2 * n2)
    if (np.any(block[:, 0] != trees) or np.any(layout != [splits, n_leaves]) or np.any(leaves[..., 0] != -n2)
            or np.any(leaves[..., 1] != -1)):
        raise r.fail(f"forests that are not all {trees} trees of {splits} splits with {n2}-float leaves")
    nodes = forest[:, :, 1:1 + 4 * splits].reshape(cascades, trees, splits, 4)  # idx1, idx2, thresh
    anchor = [r.take(r.size(what="anchor list")) for _ in range(r.size(cascades, "anchor lists"))]
    deltas = [r.floats(r.take(4 * (n := r.size(what="delta list"))).reshape(n, 2, 2))
              for _ in range(r.size(cascades, "delta lists"))]
    if r.pos != r.values.size:
        raise r.fail(f"{r.values.size - r.pos} integers left over")
    if len({a.size for a in anchor} | {d.shape[0] for d in deltas}) != 1:
        raise r.fail("cascades with different numbers of feature pixels")
    anchor, deltas = np.stack(anchor), np.stack(deltas)
    out = ShapePredictor(initial, nodes[..., 0].copy(), nodes[..., 1].copy(), r.floats(nodes[..., 2:]),
                         r.floats(leaves[..., 2:].reshape(cascades, trees, n_leaves, n2, 2)), anchor, deltas)
    if out.idx1.max() >= anchor.shape[1] or out.idx2.max() >= anchor.shape[1] or out.idx1.min() < 0 \
            or out.idx2.min() < 0 or anchor.min() < 0 or anchor.max() >= out.num_parts:
        raise r.fail("a feature or anchor index out of range")
    return out


def find_shape_file() -> Path:
    """The 5-point predictor inside the installed `face-recognition-models` package.

    Raises:
        ModelSpecError: the package is not installed.
    """
    return find_weights_file().parent / SHAPE_FILE


def read_shape_predictor(path: str | os.PathLike | None = None, *, verify: bool = True,
                         cache: bool = False) -> ShapePredictor:
    """Read and parse the 5-point predictor (default: the installed package's), checking its sha256.

    Parsing takes ~0.5-1 s; with `cache`, the parsed arrays are kept in the user cache
    (`facesearch.embedder.core.derived`, keyed by the file's sha256) and later processes read them in
    milliseconds. `load_shape_predictor` keeps one per process, cached.

    Raises:
        ModelSpecError: the file is missing, has another sha256 (with `verify`) or another structure.
    """
    path = Path(path) if path is not None else find_shape_file()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelSpecError(f"cannot read dlib shape predictor '{path}': {e} "
                             "(pip install face-recognition-models)") from e
    digest = hashlib.sha256(data).hexdigest()
    if verify and digest != SHAPE_SHA256:
        raise ModelSpecError(f"'{path}' has sha256 {digest}, expected {SHAPE_SHA256}: the file is damaged "
                             "or another version; reinstall face-recognition-models")
    if not cache:
        return parse_shape_predictor(data, str(path))
    from facesearch.embedder.core.derived import load_derived

    return load_derived(DERIVED_KIND, digest, lambda: predictor_to_bytes(parse_shape_predictor(data, str(path))),
                        predictor_from_bytes, suffix=".npz")


DERIVED_KIND = "shape-predictor-v1"  # the cached form's name; change the version when the fields change
_FIELDS = ("initial_shape", "idx1", "idx2", "thresh", "leaf_values", "anchor_idx", "deltas")


def predictor_to_bytes(predictor: ShapePredictor) -> bytes:
    """The parsed predictor's arrays as an uncompressed .npz (what the cache holds)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: getattr(predictor, name) for name in _FIELDS})
    return buffer.getvalue()


def predictor_from_bytes(data: bytes) -> ShapePredictor:
    """The inverse of `predictor_to_bytes`; raises on anything else (a damaged cache file)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        if sorted(arrays.files) != sorted(_FIELDS):
            raise ValueError(f"cached shape predictor holds {sorted(arrays.files)}, expected {sorted(_FIELDS)}")
        return ShapePredictor(**{name: arrays[name] for name in _FIELDS})


_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _load() -> ShapePredictor:
    return read_shape_predictor(cache=True)


def load_shape_predictor() -> ShapePredictor:
    """The installed package's 5-point predictor, once per process (thread-safe), parsed once per machine.

    Raises:
        ModelSpecError: see `read_shape_predictor`.
    """
    with _LOAD_LOCK:  # threads embedding photos side by side wait for one parse, not run several
        return _load()
