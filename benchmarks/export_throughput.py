"""Throughput of the exported MobileFaceNet in each PReLU form: ONNX Runtime (and OpenVINO) vs its SavedModel.

    python benchmarks/export_throughput.py [--preset mobilefacenet] [--batch 32,16] [--threads 2]
        [--forms batchnorm,prelu,tf2onnx] [--openvino f32,bf16] [--runs 7] [--iters 5] [--profile]

Converts the backbone once per PReLU form (facesearch.embedder.export.onnx_prelu), checks every runtime's
embeddings against Keras (min cosine over the batch), then times them in turn, round after round,
so drift in the machine's load hits all alike: each run is `--iters` forward passes of one
`(batch, H, W, 3)` batch after a warm-up. Printed per runtime: the median images per second over
the runs (and the range), and the median over rounds of its ratio to today's ONNX file
("tf2onnx" on ONNX Runtime) and to the SavedModel on TensorFlow, run in the same round. ONNX
Runtime runs as `facesearch.embedder.backend` opens it (spinning off; `--threads` intra-op threads);
TensorFlow gets the same intra-op threads (its thread pools are fixed once per process, so one
thread count per run of this script). `--profile` prints where ONNX Runtime spends a batch, per
operator type, for each form. Weights are untrained except for PReLU slopes and BatchNorm
statistics drawn at random (speed does not depend on them; parity would hide less).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

REFERENCE = "onnxruntime tf2onnx"  # today's file on today's runtime
SAVEDMODEL = "savedmodel (tensorflow)"


def ort_session(model: bytes, threads: int, profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session set up as `facesearch.embedder.backend` sets it up."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def openvino_run(model: bytes, threads: int, precision: str):
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
              "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
    request = core.compile_model(core.read_model(model=model), "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})[0].copy()


def runners(models: dict[str, bytes], savedmodel: Path | None, threads: int, openvino: list[str]) -> dict:
    """name -> function (batch) -> (n, d) embeddings."""
    out = {}
    for form, model in models.items():
        session = ort_session(model, threads)
        out[f"onnxruntime {form}"] = lambda x, s=session: s.run(None, {"image": x})[0]
    for precision in openvino:
        for form, model in models.items():
            out[f"openvino {precision} {form}"] = openvino_run(model, threads, precision)
    if savedmodel is not None:
        import tensorflow as tf

        serve = tf.saved_model.load(str(savedmodel)).signatures["serving_default"]
        out[SAVEDMODEL] = lambda x: serve(image=tf.constant(x))["embedding"].numpy()
    return out


def time_interleaved(run: dict, x: np.ndarray, runs: int, iters: int) -> dict[str, list[float]]:
    """Images per second of every runner, `runs` rounds, the runners in turn within a round."""
    for f in run.values():
        for _ in range(3):
            f(x)
    rates: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(runs):
        for name, f in run.items():
            start = time.perf_counter()
            for _ in range(iters):
                f(x)
            rates[name].append(iters * len(x) / (time.perf_counter() - start))
    return rates


def report(rates: dict[str, list[float]], parity: dict[str, float]) -> None:
    def paired(name: str, base: str) -> str:
        if base not in rates:
            return "    -"
        return f"{statistics.median(a / b for a, b in zip(rates[name], rates[base])):5.2f}"

    print(f"  {'runtime, PReLU form':34s} {'img/s':>7s} {'(min-max)':>15s} {'/ today':>8s} {'/ TF':>6s}  min cosine vs Keras")
    for name, r in rates.items():
        print(f"  {name:34s} {statistics.median(r):7.1f} ({min(r):6.1f}-{max(r):6.1f}) {paired(name, REFERENCE):>8s} "
              f"{paired(name, SAVEDMODEL):>6s}  {parity[name]:.13f}")


def profile(model: bytes, x: np.ndarray, threads: int, iters: int) -> tuple[float, Counter]:
    """(ms per batch over all kernels, ms per batch by operator type) of ONNX Runtime, medians per node."""
    with tempfile.TemporaryDirectory() as folder:
        session = ort_session(model, threads, profile_prefix=str(Path(folder) / "ort"))
        for _ in range(3 + iters):
            session.run(None, {"image": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"]["op_name"], e["name"])].append(e["dur"] / 1000)
    by_op: Counter = Counter()
    for (op, _), durations in per_node.items():
        by_op[op] += statistics.median(durations[3:] or durations)  # skip the warm-up runs
    return sum(by_op.values()), by_op


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mobilefacenet", help="facesearch.train.config preset of the backbone")
    parser.add_argument("--batch", default="32,16", help="batch sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime")
    parser.add_argument("--forms", default="batchnorm,prelu,tf2onnx", help="PReLU forms (onnx_prelu.PRELU_FORMS)")
    parser.add_argument("--openvino", default="", help="also time OpenVINO at these precisions, e.g. f32,bf16")
    parser.add_argument("--no-savedmodel", action="store_true", help="leave out the SavedModel on TensorFlow")
    parser.add_argument("--runs", type=int, default=7, help="rounds; the figures are medians over them")
    parser.add_argument("--iters", type=int, default=5, help="forward passes per run")
    parser.add_argument("--profile", action="store_true", help="print ONNX Runtime's time per operator type")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from facesearch.embedder.export.exporter import convert_to_onnx, parity_inputs, row_cosines, save_savedmodel
    from facesearch.train.config import get_preset
    from facesearch.train.mobilefacenet import build_backbone

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    config = get_preset(args.preset)
    keras.utils.set_random_seed(0)
    model = build_backbone(config)
    _randomise(model)
    forms = ["tf2onnx"] + [f for f in args.forms.split(",") if f and f != "tf2onnx"]
    models, counts = {}, {}
    for form in forms:
        proto, counts[form] = convert_to_onnx(model, prelu=form)
        models[form] = proto.SerializeToString()
    openvino = [p for p in args.openvino.split(",") if p]
    print(f"{args.preset} {config.input_height}x{config.input_width}, {args.threads} thread(s), "
          f"PReLUs rewritten: {counts}; ONNX Runtime {ort.__version__}, TensorFlow {tf.__version__}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; medians of {args.runs} rounds x {args.iters} batches")

    with tempfile.TemporaryDirectory() as folder:
        savedmodel = None
        if not args.no_savedmodel:
            savedmodel = Path(folder) / "savedmodel"
            save_savedmodel(model, savedmodel)
        run = runners(models, savedmodel, args.threads, openvino)
        for batch in (int(b) for b in args.batch.split(",")):
            x = parity_inputs(batch, config.input_height, config.input_width, seed=batch)
            want = model(x, training=False).numpy()
            parity = {name: float(row_cosines(f(x), want).min()) for name, f in run.items()}
            print(f"batch {batch}:")
            report(time_interleaved(run, x, args.runs, args.iters), parity)

        if args.profile:
            batch = int(args.batch.split(",")[0])
            x = parity_inputs(batch, config.input_height, config.input_width, seed=batch)
            print(f"ONNX Runtime per operator type, batch {batch}, ms per batch (median per node, summed):")
            for form in forms:
                total, by_op = profile(models[form], x, args.threads, args.iters)
                shares = ", ".join(f"{op} {ms:.1f}" for op, ms in by_op.most_common())
                print(f"  {form:10s} {total:6.1f} ms: {shares}")
    return 0


def _randomise(model) -> None:
    """PReLU slopes of both signs and BatchNorm statistics that are not the identity (seeded)."""
    import keras

    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.PReLU):
            (alpha,) = layer.get_weights()
            layer.set_weights([(rng.uniform(0.1, 0.6, alpha.shape) * rng.choice([-1, 1], alpha.shape)).astype("f4")])
        elif isinstance(layer, keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            ranges = [(0.5, 1.5), (-0.2, 0.2), (-0.1, 0.1), (0.5, 1.5)]
            layer.set_weights([rng.uniform(lo, hi, s).astype("f4") for s, (lo, hi) in zip(shapes, ranges)])


if __name__ == "__main__":
    sys.exit(main())
