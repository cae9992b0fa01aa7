"""Run a `facesearch` command with the `dlib-150` template given per-point weights (weighted 5-point fit).

For comparing weightings of the aligner's least-squares fit on LFW without editing embedder/align.py:
the template is looked up by name when the embedder starts, so replacing it in `TEMPLATES` changes
how every photo is aligned; the model and its card are untouched. Weights are five numbers in
landmark order (left eye, right eye, nose tip, left mouth corner, right mouth corner), or `none`.
It measures the fit of MTCNN's points to the template, the `dlib-150` path before the Embedder cut
dlib's own chip from dlib's predictor (facesearch.embedder.runtime.crop_face), so it puts that fit back.

    python benchmarks/align_weights.py 1,1,0.125,0.125,0.125 eval lfw --pairs pairsDevTrain.txt --no-roc --json
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np


def main() -> None:
    import facesearch.embedder.runtime
    from facesearch.cli.main import main as run_cli
    from facesearch.embedder.align import DLIB_150, align_face, register_template

    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    weights = None if sys.argv[1] == "none" else np.array(sys.argv[1].split(","), dtype=np.float32)
    register_template(dataclasses.replace(DLIB_150, weights=weights))
    facesearch.embedder.runtime.crop_face = align_face  # MTCNN's points fitted to the template, for every template
    print(f"dlib-150 weights: {weights}", file=sys.stderr)
    sys.argv = ["facesearch", *sys.argv[2:]]
    run_cli()


if __name__ == "__main__":
    main()
