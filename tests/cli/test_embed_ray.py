"""`facesearch embed --engine ray`: a Ray Data job on a local Ray instance writes what the local engine writes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from clitools import invoke_json
from real_photos import UNREADABLE, WITHOUT_FACE, make_real_gallery

from facesearch.embedder.embedding_shards import load_shards, open_shards


@pytest.fixture(scope="module")
def real_gallery(tmp_path_factory):
    return make_real_gallery(tmp_path_factory.mktemp("real") / "photos")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A 2-CPU Ray instance for this module, its session files under pytest's temporary folder."""
    ray = pytest.importorskip("ray", reason="the Ray engine needs the distributed extra")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def test_ray_engine_writes_what_the_local_engine_writes(real_gallery, model_dir, tmp_path, local_ray):
    local = invoke_json("embed", real_gallery, "--model", model_dir, "--out", tmp_path / "local", "--faces", "all")
    # Batches of 2 photos: 4 blocks over 2 actors, so results come back from both, out of order.
    remote = invoke_json("embed", real_gallery, "--model", model_dir, "--out", tmp_path / "ray", "--faces", "all",
                         "--engine", "ray", "--batch-size", "2")

    assert (remote["engine"], remote["actors"]) == ("ray", 2)
    assert [s["path"] for s in remote["skipped"]] == UNREADABLE and remote["no_face"] == WITHOUT_FACE
    for key in ("photos", "embedded", "faces", "multi_face", "no_face", "skipped", "ignored", "crops", "files"):
        assert remote[key] == local[key], key
    a, b = load_shards(tmp_path / "local"), load_shards(tmp_path / "ray")
    assert len(b) == 6
    assert (b.path, b.identity, b.face.tolist(), b.sha256, b.size) == (a.path, a.identity, a.face.tolist(), a.sha256,
                                                                       a.size)
    np.testing.assert_allclose(np.array(b.box), np.array(a.box), atol=1e-4)
    cosine = np.sum(a.embedding * b.embedding, axis=1)
    assert cosine.min() >= 0.9999, cosine
    assert open_shards(tmp_path / "ray").build == open_shards(tmp_path / "local").build


def test_an_actor_keeps_going_when_a_photo_breaks_it(real_gallery, model_dir):
    from facesearch.embedder.distributed import EmbedderSpec, PhotoEmbedder, decode_results
    from facesearch.embedder.embedding_job import PhotoOutcome

    actor = PhotoEmbedder(EmbedderSpec(str(model_dir)), str(real_gallery), "largest", 4)  # as Ray builds it

    class Breaks:
        """The actor's embedder, but the decoder crashes on one photo (a crash, not an unreadable file)."""

        def __init__(self, inner):
            self.inner, self.card, self.crop_method = inner, inner.card, inner.crop_method

        def faces(self, path):
            if Path(path).name == "grey.png":
                raise RuntimeError("decoder crashed")
            return self.inner.faces(path)

        def embed(self, crops, batch_size=16):
            return self.inner.embed(crops, batch_size=batch_size)

    actor.embedder = Breaks(actor.embedder)
    paths = ["broken/bad.jpg", "cat/chelsea.png", "eileen/astronaut.png", "eileen/grey.png"]
    batch = {"path": np.array(paths, object), "identity": np.array([p.split("/")[0] for p in paths], object),
             "size": np.full(4, -1), "mtime_ns": np.full(4, -1)}

    rows, outcomes = decode_results(actor(batch))

    assert [o.path for o in outcomes] == paths
    assert outcomes[1:3] == [PhotoOutcome("cat/chelsea.png", 0), PhotoOutcome("eileen/astronaut.png", 1)]
    assert "not an image file" in outcomes[0].error and "RuntimeError: decoder crashed" in outcomes[3].error
    assert rows.path == ["eileen/astronaut.png"] and rows.size == [None] and len(rows.sha256[0]) == 64
    assert abs(float(np.linalg.norm(rows.embedding[0])) - 1) < 1e-5
