"""ONNX Runtime throughput of the exported MobileFaceNet with fused vs unfused PReLU; prints the ratio.

    python benchmarks/export_throughput.py [--preset mobilefacenet] [--batch 32] [--runs 7]

Each run times `--iters` forward passes of one `(batch, H, W, 3)` batch after a warm-up; the
figure reported is the median over runs, in images per second. Weights are untrained: speed does
not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402


def throughput(model: onnx.ModelProto, x: np.ndarray, *, runs: int = 7, iters: int = 10,
               threads: int | None = None) -> list[float]:
    """Images per second of `model` on batch `x` (n, H, W, 3) float32, one figure per run."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(3):
        session.run(None, feed)
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(iters):
            session.run(None, feed)
        rates.append(iters * len(x) / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mobilefacenet", help="train.config preset of the backbone")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10, help="forward passes per run")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    args = parser.parse_args(argv)

    from embedder.export.exporter import convert_to_onnx, parity_inputs
    from train.config import get_preset
    from train.mobilefacenet import build_backbone

    config = get_preset(args.preset)
    model = build_backbone(config)
    unfused, _ = convert_to_onnx(model, fuse=False)
    fused, count = convert_to_onnx(model)
    x = parity_inputs(args.batch, config.input_height, config.input_width, seed=0)
    np.testing.assert_allclose(
        ort.InferenceSession(fused.SerializeToString()).run(None, {"image": x})[0],
        ort.InferenceSession(unfused.SerializeToString()).run(None, {"image": x})[0], rtol=1e-4, atol=1e-5)

    # Interleave the two so drift in machine load hits both alike.
    rates: dict[str, list[float]] = {"unfused": [], "fused": []}
    for _ in range(args.runs):
        rates["unfused"] += throughput(unfused, x, runs=1, iters=args.iters, threads=args.threads)
        rates["fused"] += throughput(fused, x, runs=1, iters=args.iters, threads=args.threads)
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.preset} {config.input_height}x{config.input_width}, batch {args.batch}, "
          f"{count} PReLUs fused, ORT {ort.__version__}, {os.cpu_count()} CPUs, median of {args.runs} runs")
    for k in ("unfused", "fused"):
        print(f"  {k:8s} {median[k]:8.1f} img/s median, {max(rates[k]):8.1f} best   "
              f"(runs: {', '.join(f'{r:.1f}' for r in rates[k])})")
    print(f"  fused / unfused = {median['fused'] / median['unfused']:.2f}x median, "
          f"{max(rates['fused']) / max(rates['unfused']):.2f}x best")
    return 0


if __name__ == "__main__":
    sys.exit(main())
