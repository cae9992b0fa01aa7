"""Synthetic faces: layout, determinism, disjoint continuations."""

import numpy as np
import pytest
from PIL import Image

from facesearch.train.synthetic import make_synthetic_faces


def pixels(path):
    return np.asarray(Image.open(path), np.float32)


def test_layout_and_size(tmp_path):
    paths = make_synthetic_faces(tmp_path, identities=3, per_identity=2, size=(112, 96), seed=0)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "id_00/000.png", "id_00/001.png", "id_01/000.png", "id_01/001.png", "id_02/000.png", "id_02/001.png"]
    image = Image.open(paths[0])
    assert image.size == (96, 112) and image.mode == "RGB"


def test_deterministic_and_seeded(tmp_path):
    a = make_synthetic_faces(tmp_path / "a", identities=2, per_identity=2, seed=5)
    b = make_synthetic_faces(tmp_path / "b", identities=2, per_identity=2, seed=5)
    c = make_synthetic_faces(tmp_path / "c", identities=2, per_identity=2, seed=6)
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert all(x.read_bytes() != z.read_bytes() for x, z in zip(a, c, strict=True))


def test_start_continues_the_same_identities(tmp_path):
    first = make_synthetic_faces(tmp_path / "all", identities=2, per_identity=4, seed=0)
    later = make_synthetic_faces(tmp_path / "later", identities=2, per_identity=2, seed=0, start=2)
    assert [p.name for p in later] == ["002.png", "003.png"] * 2
    by_name = {p.relative_to(tmp_path / "all"): p for p in first}
    for p in later:
        assert p.read_bytes() == by_name[p.relative_to(tmp_path / "later")].read_bytes()


def test_samples_vary_but_share_their_identity(tmp_path):
    paths = make_synthetic_faces(tmp_path, identities=4, per_identity=12, seed=0)
    images = np.stack([pixels(p) for p in paths]).reshape(4, 12, -1)
    assert images.std(axis=1).mean() > 30  # strong per-sample nuisance
    means = images.mean(axis=1)  # the noise averages out, the prototypes stay apart
    within = np.linalg.norm(images - means[:, None], axis=2).mean()
    between = np.mean([np.linalg.norm(means[i] - means[j]) for i in range(4) for j in range(i + 1, 4)])
    # Means of 12 samples lie further apart than their own noise (within / sqrt(12)), yet a single
    # sample lies further from its identity's mean than the means from each other: hard per image.
    assert 2 * within / np.sqrt(12) < between < within


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_synthetic_faces(tmp_path, identities=0)
    with pytest.raises(ValueError):
        make_synthetic_faces(tmp_path, start=-1)
