"""MTCNN face detection in numpy + ONNX Runtime or OpenVINO: every face's box, score and 5 landmarks.

A step-for-step port of the `mtcnn` package (1.0, MIT) cascade, so that both find the same faces:
image pyramid with area resampling, P-Net proposals, R-Net and O-Net refinement on bilinear crops
(TensorFlow `crop_and_resize` semantics), and that package's NMS, which drops a box when *any*
higher-scoring box overlaps it (not only the kept ones). Zhang et al., "Joint Face Detection and
Alignment using Multi-task Cascaded Convolutional Networks", 2016, https://arxiv.org/abs/1604.02878.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facesearch.embedder.backend import open_session, resolve_backend
from facesearch.embedder.detect.nets import NETS, load_net

# The nets OpenVINO runs when it is the detector's backend. Alone, it runs each of MTCNN's nets
# 2.5-3x faster than ONNX Runtime; inside the cascade, P-Net and the pyramid's resize see a new input
# shape at every level, which costs OpenVINO more per call than it saves (measured on LFW: the
# cascade 1.2-1.4x slower with them on OpenVINO, 1.1-1.3x faster with only R-Net and O-Net there).
_OPENVINO_NETS = frozenset({"rnet", "onet"})


@dataclass(frozen=True)
class DetectorConfig:
    """Options of the cascade; the defaults are the `mtcnn` package's.

    Attributes:
        min_face_size: smallest face side looked for, in pixels.
        score_threshold: O-Net score a face needs (the final "is a face" score).
        pnet_threshold / rnet_threshold: scores the earlier stages need.
        scale_factor: ratio between pyramid levels.
        max_side: photos whose longer side exceeds this are searched at this size (boxes and
            landmarks are mapped back to the photo); keeps 12-megapixel phone photos to ~0.1 s of
            work at the price of faces under min_face_size * side / max_side pixels. None: never.
        max_candidates: P-Net boxes kept per pyramid level and per photo, best scores first, before
            each overlap step (and so at most this many reach R-Net and O-Net). A photo of people has tens
            to hundreds; a photo tiled with thousands of tiny faces had 21,184, and the overlap steps,
            R-Net and O-Net grew with them. None: all.
    """

    min_face_size: int = 20
    score_threshold: float = 0.8
    pnet_threshold: float = 0.6
    rnet_threshold: float = 0.7
    scale_factor: float = 0.709
    nms_pnet_scale: float = 0.5
    nms_pnet: float = 0.7
    nms_rnet: float = 0.7
    nms_onet: float = 0.7
    max_side: int | None = 1280
    max_candidates: int | None = 4000


@dataclass(frozen=True)
class Detection:
    """One face found in a photo.

    Attributes:
        box: (x1, y1, x2, y2) in the photo's pixels, clipped to the photo.
        score: O-Net face score in [0, 1].
        landmarks: (5, 2) float32 (x, y): left eye, right eye, nose tip, left and right mouth corner
            (as seen in the image: "left" is the one with the smaller x).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray


class Detector:
    """MTCNN on ONNX Runtime or OpenVINO; thread-safe (`detect` may be called from several threads at once).

    Args:
        config: cascade options (`DetectorConfig`).
        threads: intra-op threads per net; None lets the backend choose.
        backend: "onnxruntime", "openvino" or "auto" (`facesearch.embedder.backend.resolve_backend`); None:
            $FACESEARCH_BACKEND, else "auto".
        batches: it will see many photos (see `resolve_backend`).
    """

    def __init__(self, config: DetectorConfig | None = None, *, threads: int | None = 1, backend: str | None = None,
                 batches: bool = False):
        self.config = config or DetectorConfig()
        self.backend = resolve_backend(backend, "detector", batches=batches)
        self._sessions = {net: load_net(net, functools.partial(
            open_session, backend=self.backend if net in _OPENVINO_NETS else "onnxruntime", role="detector",
            threads=threads)) for net in NETS}

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Find every face in one photo.

        Args:
            image: (H, W, 3) uint8 RGB (as `facesearch.embedder.images.read_image` returns).

        Returns:
            Detections, highest score first.
        """
        return self.detect_many([image])[0]

    def detect_many(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Find every face in several photos; R-Net and O-Net each run once for all of them.

        One model call per stage instead of one per photo: the same faces as `detect` on each photo
        (scores may differ in the last float bits, as a batch is summed in another order).

        Args:
            images: each (H, W, 3) uint8 RGB.

        Returns:
            One list of detections per photo, in order, highest score first.
        """
        views = [self.view(image) for image in images]
        return self.detect_views([v for v, _ in views], [f for _, f in views])

    def view(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
        """What the cascade searches for a photo: itself, or a copy at `max_side` with its (x, y) factors.

        `detect_views` of views made here finds what `detect_many` of the photos does; a caller that holds
        many photos can keep only their views (a 40-megapixel photo's view at 1280 is 25 times smaller).
        """
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        h, w = image.shape[:2]
        limit = self.config.max_side
        if not limit or max(h, w) <= limit:
            return image, None
        scale = limit / max(h, w)
        resized = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                Image.Resampling.BILINEAR)
        return np.asarray(resized), (resized.width / w, resized.height / h)

    def detect_views(self, views: Sequence[np.ndarray], factors: Sequence[tuple[float, float] | None]
                     ) -> list[list[Detection]]:
        """`detect_many` of photos given as their `view`s: detections in the photos' own pixels."""
        out = []
        for rows, factor in zip(self.detect_arrays(views), factors):
            if factor is not None:
                fx, fy = factor
                rows[:, 1:5] /= [fx, fy, fx, fy]
                rows[:, 6:11] /= fx
                rows[:, 11:16] /= fy
            out.append([Detection(tuple(float(v) for v in r[1:5]), float(r[5]),
                                  np.stack([r[6:11], r[11:16]], axis=1).astype(np.float32)) for r in rows])
        return out

    def detect_array(self, image: np.ndarray) -> np.ndarray:
        """The raw cascade output, as the `mtcnn` package's numpy output.

        Returns:
            (n, 16) float64 rows [0, x1, y1, x2, y2, score, lx1..lx5, ly1..ly5], highest score first.
        """
        return self.detect_arrays([image])[0]

    def detect_arrays(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`detect_array` of each image, with one R-Net and one O-Net call for all of them."""
        xs = [(image.astype(np.float32) - 127.5) / 128.0 for image in images]
        boxes = [self._stage_p(x) for x in xs]
        boxes = self._refine(xs, boxes, "rnet", 24, self._finish_r)
        boxes = self._refine(xs, boxes, "onet", 48, self._finish_o)
        out = []
        for image, b in zip(images, boxes):
            if not len(b):
                out.append(np.empty((0, 16)))
                continue
            h, w = image.shape[:2]
            b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, w - 1)
            b[:, [2, 4]] = np.clip(b[:, [2, 4]], 0, h - 1)
            out.append(b)
        return out

    # -- stages -----------------------------------------------------------------------------------

    def _stage_p(self, x: np.ndarray) -> np.ndarray:
        c = self.config
        h, w = x.shape[:2]
        per_scale = []
        for scale in pyramid_scales(w, h, c.min_face_size, c.scale_factor):
            if min(int(h * scale), int(w * scale)) < 12:
                # Below P-Net's window. The package counts its levels from the image size alone, so a
                # min_face_size over 20 reaches such levels, where its TensorFlow run fails.
                continue
            (scaled,) = self._sessions["resize"].run({
                "image": x[None], "wy": _area_weights(h, int(h * scale)), "wxt": _area_weights_t(w, int(w * scale))})
            pnet = self._sessions["pnet"]
            out = dict(zip(pnet.outputs, pnet.run({"image": scaled})))
            boxes = proposals(out["reg"][0], out["prob"][0], c.pnet_threshold)[:c.max_candidates]  # best first
            boxes[:, 1:5] /= scale
            per_scale.append(boxes[nms(boxes[:, 1:5], c.nms_pnet_scale, "union")])
        if not per_scale:
            return np.empty((0, 6))
        # The cap, before each overlap step (they are quadratic in their boxes: 12 s of 17 for a photo tiled
        # with 2,500 faces), keeps the best-scoring boxes: a row's fate in `nms` depends only on rows before it.
        boxes = sort_by_score(np.concatenate(per_scale))[:c.max_candidates]
        boxes = boxes[nms(boxes[:, 1:5], c.nms_pnet, "union")]
        return to_square(boxes)

    def _refine(self, xs: list[np.ndarray], boxes: list[np.ndarray], net: str, size: int,
                finish: Callable[..., np.ndarray]) -> list[np.ndarray]:
        """Run R-Net or O-Net once on the crops of every photo's boxes, then each photo's own step."""
        todo = [i for i, b in enumerate(boxes) if len(b)]
        if not todo:
            return boxes
        crops = np.concatenate([crop_and_resize(xs[i], boxes[i][:, 1:5], size) for i in todo])
        session = self._sessions[net]
        # In chunks: O-Net's activations for 4,000 boxes in one call took about 2 GB.
        parts_out = [session.run({"image": crops[k:k + NET_BATCH]}) for k in range(0, len(crops), NET_BATCH)]
        outputs = [np.concatenate(o) for o in zip(*parts_out)] if len(parts_out) > 1 else parts_out[0]
        names = session.outputs
        split = np.cumsum([len(boxes[i]) for i in todo])[:-1]
        parts = {name: np.split(y, split) for name, y in zip(names, outputs)}
        out = list(boxes)
        for k, i in enumerate(todo):
            out[i] = finish(boxes[i], **{name: parts[name][k] for name in names})
        return out

    def _finish_r(self, boxes: np.ndarray, reg: np.ndarray, prob: np.ndarray) -> np.ndarray:
        c = self.config
        boxes = boxes.copy()
        boxes[:, 5] = prob[:, 1]
        boxes = regress(boxes, reg)
        boxes = sort_by_score(boxes[boxes[:, 5] > c.rnet_threshold])
        return to_square(boxes[nms(boxes[:, 1:5], c.nms_rnet, "union")])

    def _finish_o(self, boxes: np.ndarray, reg: np.ndarray, landmarks: np.ndarray, prob: np.ndarray) -> np.ndarray:
        c = self.config
        bw = boxes[:, 3:4] - boxes[:, 1:2] + 1
        bh = boxes[:, 4:5] - boxes[:, 2:3] + 1
        marks = landmarks.astype(np.float64)
        marks[:, 0:5] = bw * marks[:, 0:5] + boxes[:, 1:2] - 1
        marks[:, 5:10] = bh * marks[:, 5:10] + boxes[:, 2:3] - 1
        boxes = boxes.copy()
        boxes[:, 5] = prob[:, 1]
        boxes = np.concatenate([regress(boxes, reg), marks], axis=1)
        boxes = sort_by_score(boxes[boxes[:, 5] > c.score_threshold])
        return boxes[nms(boxes[:, 1:5], c.nms_onet, "min")]


# -- cascade pieces (numpy, after mtcnn/utils) -------------------------------------------------------


def pyramid_scales(width: int, height: int, min_face_size: int, scale_factor: float,
                   min_size: int = 12) -> np.ndarray:
    """Scales of the image pyramid: the first maps `min_face_size` to P-Net's 12 px window."""
    count = round(-((np.log(min(width, height) / min_size) / np.log(scale_factor)) + 1))
    return (min_size / min_face_size) * scale_factor ** np.arange(max(count, 0))


@functools.lru_cache(maxsize=256)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    # TensorFlow's ResizeArea (half_pixel_centers off): output cell i covers input [i*s, (i+1)*s),
    # s = n_in / n_out, each input pixel weighted by the length it overlaps, divided by s.
    s = n_in / n_out
    lo = np.arange(n_out)[:, None] * s
    hi = lo + s
    px = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None)
    return (overlap / s).astype(np.float32)


@functools.lru_cache(maxsize=256)
def _area_weights_t(n_in: int, n_out: int) -> np.ndarray:
    """`_area_weights(n_in, n_out).T`, contiguous (the resize graph's right-hand factor)."""
    return np.ascontiguousarray(_area_weights(n_in, n_out).T)


def resize_area(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) float32 -> (height, width, C) float32 by area averaging (TensorFlow AREA).

    The numpy reference of what `Detector` runs on ONNX Runtime (the "resize" graph).
    """
    h, w, c = x.shape
    rows = (_area_weights(h, height) @ x.reshape(h, w * c)).reshape(height, w, c)
    cols = _area_weights(w, width) @ rows.transpose(1, 0, 2).reshape(w, height * c)
    return np.ascontiguousarray(cols.reshape(width, height, c).transpose(1, 0, 2))


def proposals(reg: np.ndarray, prob: np.ndarray, threshold: float, stride: int = 2,
              cell: int = 12) -> np.ndarray:
    """P-Net maps (H', W', 4) and (H', W', 2) -> (n, 6) [0, x1, y1, x2, y2, score] in scaled pixels."""
    score = prob[:, :, 1]
    yy, xx = np.nonzero(score > threshold)
    r = reg[yy, xx].astype(np.float64)
    # The package's cell spans [stride*i + 1, stride*i + cell] (a width of cell - 1).
    x1, y1 = xx * stride + 1.0, yy * stride + 1.0
    x2, y2 = xx * stride + float(cell), yy * stride + float(cell)
    size = cell - 1.0
    boxes = np.stack([np.zeros_like(x1), x1 + r[:, 0] * size, y1 + r[:, 1] * size,
                      x2 + r[:, 2] * size, y2 + r[:, 3] * size, score[yy, xx].astype(np.float64)], axis=1)
    return sort_by_score(boxes)


def sort_by_score(boxes: np.ndarray) -> np.ndarray:
    """Rows by descending score (column 5), as the package's `argsort(...)[::-1]`."""
    return boxes[np.argsort(boxes[:, 5])[::-1]]


NET_BATCH = 256  # boxes per R-Net / O-Net call: bounded memory; a photo of people has far fewer (one call)
NMS_BLOCK_CELLS = 1 << 21  # overlaps computed at once: ~16 MB per float64 temporary, whatever n is


def nms(boxes: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Indices of rows kept: a row goes if any earlier row overlaps it by more than `threshold`.

    The overlaps are computed a block of columns at a time (every earlier row against a few later
    ones), so memory stays bounded: one photo of thousands of tiny tiled faces gave 21,184 candidate
    boxes, whose full n x n matrices took 3.3 GB each. Same arithmetic per pair, same result.

    Args:
        boxes: (n, 4) x1, y1, x2, y2, sorted best first.
        method: "union" (IoU) or "min" (intersection over the smaller area).
    """
    n = len(boxes)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(n, dtype=bool)
    width = max(1, NMS_BLOCK_CELLS // n)
    for start in range(1, n, width):
        stop = min(n, start + width)
        rows, cols = slice(0, stop), slice(start, stop)  # the rows before each column (and a few after: masked)
        iw = np.maximum(0, np.minimum(boxes[rows, None, 2], boxes[None, cols, 2])
                        - np.maximum(boxes[rows, None, 0], boxes[None, cols, 0]))
        ih = np.maximum(0, np.minimum(boxes[rows, None, 3], boxes[None, cols, 3])
                        - np.maximum(boxes[rows, None, 1], boxes[None, cols, 1]))
        inter = iw * ih
        with np.errstate(divide="ignore", invalid="ignore"):
            if method == "union":
                overlap = inter / (area[rows, None] + area[None, cols] - inter)
            else:
                overlap = inter / np.minimum(area[rows, None], area[None, cols])
        earlier = np.arange(stop)[:, None] < np.arange(start, stop)[None, :]
        suppressed[cols] = ((overlap > threshold) & earlier).any(axis=0)
    return np.nonzero(~suppressed)[0]


def to_square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square about its centre (side = its longer side)."""
    boxes = boxes.copy()
    w, h = boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2]
    side = np.maximum(w, h)
    boxes[:, 1] += w * 0.5 - side * 0.5
    boxes[:, 2] += h * 0.5 - side * 0.5
    boxes[:, 3] = boxes[:, 1] + side
    boxes[:, 4] = boxes[:, 2] + side
    return boxes


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply R/O-Net box offsets (fractions of the box's +1 width/height)."""
    boxes = boxes.copy()
    w = boxes[:, 3] - boxes[:, 1] + 1
    h = boxes[:, 4] - boxes[:, 2] + 1
    boxes[:, 1:5] += offsets * np.stack([w, h, w, h], axis=1)
    return boxes


def crop_and_resize(x: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Bilinear crops as TensorFlow's `crop_and_resize` with boxes normalised by (W, H), zeros outside.

    Args:
        x: (H, W, 3) float32 normalised image.
        boxes: (n, 4) x1, y1, x2, y2 in pixels.

    Returns:
        (n, size, size, 3) float32.
    """
    h, w = x.shape[:2]
    t = np.arange(size) / (size - 1)
    # crop_and_resize samples y = y1n * (H - 1) + i * (y2n - y1n) * (H - 1) / (size - 1).
    ys = (boxes[:, 1:2] / h + t[None] * (boxes[:, 3:4] - boxes[:, 1:2]) / h) * (h - 1)
    xs = (boxes[:, 0:1] / w + t[None] * (boxes[:, 2:3] - boxes[:, 0:1]) / w) * (w - 1)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy = (ys - y0).astype(np.float32)[:, :, None, None]
    fx = (xs - x0).astype(np.float32)[:, None, :, None]
    # Rows and columns as offsets into the flattened (H * W, 3) image: one `take` per corner.
    r0, r1 = np.clip(y0, 0, h - 1)[:, :, None] * w, np.clip(y0 + 1, 0, h - 1)[:, :, None] * w
    c0, c1 = np.clip(x0, 0, w - 1)[:, None, :], np.clip(x0 + 1, 0, w - 1)[:, None, :]
    flat = x.reshape(h * w, x.shape[2])
    top = flat.take(r0 + c0, axis=0) * (1 - fx) + flat.take(r0 + c1, axis=0) * fx
    bottom = flat.take(r1 + c0, axis=0) * (1 - fx) + flat.take(r1 + c1, axis=0) * fx
    out = top * (1 - fy) + bottom * fy
    inside = ((ys >= 0) & (ys <= h - 1))[:, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :]
    return np.where(inside[..., None], out, 0.0).astype(np.float32)
