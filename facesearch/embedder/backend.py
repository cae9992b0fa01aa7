"""Where the run-time ONNX models run: ONNX Runtime (always installed) or OpenVINO (the [openvino] extra).

Both read the same ONNX files. Measured on a 2-core AMD EPYC (Zen 4, AVX-512 BF16), one thread each,
on fixed input shapes: OpenVINO runs MTCNN's nets 2.5-3x faster than ONNX Runtime with outputs equal
to 1e-6, and the default model (dlib's ResNet, batch 16) 2x faster in bfloat16, the precision it picks
where the CPU has it (embeddings within cosine 0.99997 of float32), while in float32 it is no faster.
In the cascade, P-Net's input changes shape at every pyramid level, which OpenVINO pays for per call,
so the detector's "openvino" runs R-Net and O-Net there and the rest on ONNX Runtime
(facesearch.embedder.detect.cascade). Importing OpenVINO costs a process ~0.3 s more than ONNX Runtime (a cold
`facesearch query` went from 0.19 to 0.26 of `import tensorflow`). So "auto" keeps a process that
embeds a few photos (a query) on ONNX Runtime, and runs the detector of the photo loop's workers
(`batches`) on OpenVINO where it is installed (the same faces); the embedder stays on ONNX Runtime (the
same vectors, to float32 rounding). "openvino" moves the embedder there too, in bfloat16 where the CPU
has it: faster, with vectors that differ from float32 ones in the fifth digit. `FACESEARCH_BACKEND`
sets it for a process.
OpenVINO's compiled models are cached under `<cache>/openvino`, so a process after the first skips
compiling.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Protocol

import numpy as np

from facesearch.embedder.core.environment import cache_dir
from facesearch.embedder.core.errors import ModelSpecError

BACKENDS = ("auto", "onnxruntime", "openvino")
ROLES = ("embedder", "detector")


class Session(Protocol):
    """One loaded model: named inputs in, outputs in the model's output order."""

    backend: str
    inputs: dict[str, list]  # input name -> shape (ints; None or a name for a free dimension)
    outputs: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def openvino_installed() -> bool:
    """Whether the OpenVINO runtime can be imported (found without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(requested: str | None, role: str, *, batches: bool = False) -> str:
    """The backend a model of `role` ("embedder" or "detector") runs on.

    Args:
        requested: "onnxruntime", "openvino", "auto", or None for $FACESEARCH_BACKEND (default "auto").
        batches: the model will see many photos (a worker of the photo loop), so a slower start
            pays back: "auto" then puts the detector on OpenVINO where it is installed.

    Raises:
        ModelSpecError: an unknown backend, or "openvino" asked for but not installed.
    """
    name = requested or os.environ.get("FACESEARCH_BACKEND") or "auto"
    if name not in BACKENDS:
        raise ModelSpecError(f"unknown inference backend '{name}': expected one of {list(BACKENDS)}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if name == "openvino" and not openvino_installed():
        raise ModelSpecError("the OpenVINO backend was asked for but is not installed: "
                             "pip install 'facesearch[openvino]', or set FACESEARCH_BACKEND=onnxruntime")
    if name != "auto":
        return name
    if not openvino_installed():
        return "onnxruntime"
    return "openvino" if role == "detector" and batches else "onnxruntime"


def open_session(model: str | os.PathLike | bytes, *, backend: str, role: str, threads: int | None) -> Session:
    """Load an ONNX model (a file, or its bytes) on a resolved backend (`resolve_backend`).

    Args:
        threads: intra-op threads; None lets the backend use every core.
    """
    if backend == "openvino":
        return _OpenVinoSession(model, role=role, threads=threads)
    return _OrtSession(model, threads=threads)


class _OrtSession:
    backend = "onnxruntime"

    def __init__(self, model, *, threads: int | None):
        import onnxruntime as ort  # deferred: keeps `import facesearch.embedder.runtime` cheap for --help

        options = ort.SessionOptions()
        # Idle ONNX Runtime threads spin by default, starving the threads and processes that read
        # photos beside them: with spinning off, building an index ran ~1.5x faster on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                             providers=["CPUExecutionProvider"])
        self.inputs = {i.name: list(i.shape) for i in self._session.get_inputs()}
        self.outputs = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self.outputs, feeds)


class _OpenVinoSession:
    """A compiled OpenVINO model; one infer request per thread (a request is not thread-safe)."""

    backend = "openvino"

    def __init__(self, model, *, role: str, threads: int | None):
        core = _core()
        ov_model = core.read_model(model=model) if isinstance(model, bytes) else core.read_model(str(model))
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if role == "detector":
            # The cascade compares scores with thresholds: keep its nets in float32 (as fast, here).
            config["INFERENCE_PRECISION_HINT"] = "f32"
        # Names as the ONNX file has them (taken before compiling, which may rename merged tensors);
        # the compiled model keeps the order.
        self.inputs = {i.get_any_name(): [d.get_length() if d.is_static else None for d in i.get_partial_shape()]
                       for i in ov_model.inputs}
        self.outputs = [o.get_any_name() for o in ov_model.outputs]
        self._compiled = core.compile_model(ov_model, "CPU", config)
        self._local = threading.local()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer(feeds)  # copies the outputs (share_outputs=False)
        return [result[o] for o in self._compiled.outputs]


_CORE = None
_CORE_LOCK = threading.Lock()


def _core():
    """One OpenVINO Core per process, caching compiled models in the user cache."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            core = ov.Core()
            folder = cache_dir() / "openvino"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(folder)})
            except OSError:
                pass  # no writable cache: every process compiles its models
            _CORE = core
        return _CORE
