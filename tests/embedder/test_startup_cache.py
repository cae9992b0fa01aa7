"""What every process needs is made once per machine (user cache, keyed by sha256); backends agree."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from dlib_fixtures import weights_file
from pipeline_fakes import write_linear_model

from facesearch.embedder.backend import openvino_installed, resolve_backend
from facesearch.embedder.core.derived import derived_path, load_derived
from facesearch.embedder.core.errors import ModelSpecError

FIELDS = ("initial_shape", "idx1", "idx2", "thresh", "leaf_values", "anchor_idx", "deltas")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_derived_file_is_built_once_and_rebuilt_when_damaged_or_the_source_changes(cache):
    builds = []

    def build(text):
        builds.append(text)
        return text.encode()

    def load(data):
        if not data.startswith(b"v:"):
            raise ValueError("damaged")
        return data.decode()

    assert load_derived("thing-v1", "aa" * 32, lambda: build("v:one"), load) == "v:one"
    assert load_derived("thing-v1", "aa" * 32, lambda: build("v:never"), load) == "v:one"  # read, not built
    derived_path("thing-v1", "aa" * 32).write_bytes(b"garbage")
    assert load_derived("thing-v1", "aa" * 32, lambda: build("v:again"), load) == "v:again"
    assert load_derived("thing-v1", "bb" * 32, lambda: build("v:other"), load) == "v:other"  # another source
    assert builds == ["v:one", "v:again", "v:other"]
    with pytest.raises(ValueError, match="damaged"):  # a bad build is never written
        load_derived("thing-v1", "cc" * 32, lambda: b"bad", load)
    assert not derived_path("thing-v1", "cc" * 32).exists()


def test_an_unwritable_cache_costs_speed_not_the_result(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FACESEARCH_CACHE", str(blocker / "cache"))
    assert load_derived("thing-v1", "aa" * 32, lambda: b"v", bytes) == b"v"


def test_shape_predictor_is_parsed_once_per_machine(cache, monkeypatch):
    weights_file()
    import facesearch.embedder.dlib.shape_predictor as sp

    parsed = sp.read_shape_predictor(cache=False)
    cached = sp.read_shape_predictor(cache=True)  # parses and writes the cache
    assert list((cache / "derived").glob(f"{sp.DERIVED_KIND}-{sp.SHAPE_SHA256[:24]}*.npz"))
    monkeypatch.setattr(sp, "parse_shape_predictor", lambda *a, **k: pytest.fail("parsed again"))
    again = sp.read_shape_predictor(cache=True)
    for name in FIELDS:
        for other in (cached, again):
            np.testing.assert_array_equal(getattr(parsed, name), getattr(other, name))
            assert getattr(parsed, name).dtype == getattr(other, name).dtype
    image = np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(parsed.predict(image, (10, 10, 60, 60)), again.predict(image, (10, 10, 60, 60)))


def test_a_warm_process_detects_without_importing_onnx(cache):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photo")
    from facesearch.embedder.detect import Detector
    from facesearch.embedder.detect.nets import NETS

    reference = Detector(backend="onnxruntime").detect_array(skimage_data.astronaut())  # builds the cache
    assert len(list((cache / "derived").glob("mtcnn-*.onnx"))) == len(NETS)
    script = ("import sys, numpy as np\n"
              "from skimage import data\n"
              "from facesearch.embedder.detect import Detector\n"
              "from facesearch.embedder.dlib.shape_predictor import load_shape_predictor\n"
              "rows = Detector(backend='onnxruntime').detect_array(data.astronaut())\n"
              "load_shape_predictor()\n"
              "print(sorted(m for m in ('onnx', 'ml_dtypes', 'joblib') if m in sys.modules))\n"
              "np.save(sys.argv[1], rows)\n")
    out = subprocess.run([sys.executable, "-c", script, str(cache / "rows.npy")], capture_output=True, text=True,
                         timeout=120, env=os.environ | {"FACESEARCH_CACHE": str(cache)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    np.testing.assert_array_equal(np.load(cache / "rows.npy"), reference)


def test_backend_choice(monkeypatch):
    with pytest.raises(ModelSpecError, match="unknown inference backend 'tpu'"):
        resolve_backend("tpu", "embedder")
    monkeypatch.setenv("FACESEARCH_BACKEND", "onnxruntime")
    assert resolve_backend(None, "embedder") == resolve_backend(None, "detector") == "onnxruntime"
    monkeypatch.delenv("FACESEARCH_BACKEND")
    # A process with a few photos starts fastest on ONNX Runtime; the loop's workers put the detector
    # on OpenVINO where it is installed; the embedder stays on ONNX Runtime unless asked.
    assert resolve_backend("auto", "detector") == resolve_backend("auto", "embedder", batches=True) == "onnxruntime"
    assert resolve_backend("auto", "detector", batches=True) == ("openvino" if openvino_installed() else "onnxruntime")


@pytest.mark.skipif(not openvino_installed(), reason="the [openvino] extra is not installed")
def test_openvino_gives_what_onnx_runtime_gives(tmp_path):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photo")
    from facesearch.embedder.detect import Detector
    from facesearch.embedder.runtime import Embedder

    image = skimage_data.astronaut()
    ort_rows = Detector(backend="onnxruntime").detect_array(image)
    ov_rows = Detector(backend="openvino").detect_array(image)
    assert len(ort_rows) == len(ov_rows) == 1
    np.testing.assert_allclose(ov_rows, ort_rows, atol=1e-3)
    model = write_linear_model(tmp_path / "model", 32, "none", dim=16)
    crops = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(5)]
    a = Embedder(model, backend="onnxruntime").embed(crops)
    b = Embedder(model, backend="openvino").embed(crops)
    assert (a * b).sum(axis=1).min() >= 0.999  # bfloat16 where the CPU has it
