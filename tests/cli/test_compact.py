"""`facesearch compact` on an index with several segments and removed faces."""

from __future__ import annotations

import numpy as np
from clitools import invoke, invoke_json

from facesearch.embedder.core.model_card import ModelCard
from facesearch.index import GalleryIndex, open_writer
from facesearch.index.storage.store import Photo

CARD = ModelCard(name="fake-vectors", input_height=8, input_width=8, embedding_size=8, alignment_template="none")


def _index(tmp_path, rng) -> tuple:
    (tmp_path / "model").mkdir()
    for batch in range(3):
        with open_writer(tmp_path / "idx", card=CARD, model_dir=tmp_path / "model") as w:
            for i in range(5):
                v = rng.standard_normal(8).astype(np.float32)
                w.add_photo(Photo(f"p{batch}-{i}.jpg", f"id{i}", 1, 1, f"{batch}{i}", 1, "api"), [(0, None)],
                            (v / np.linalg.norm(v))[None])
            w.remove_photos([f"p{batch}-0.jpg"])
            w.commit()
    q = rng.standard_normal((3, 8)).astype(np.float32)
    return tmp_path / "idx", q / np.linalg.norm(q, axis=1, keepdims=True)


def _answers(idx, q):
    with GalleryIndex.open(idx) as g:
        scores, ids = g.search(q, 5)
        return [[r.path for r in g.records(row)] for row in ids], scores.tolist()


def test_compact_merges_segments_and_drops_removed_faces(tmp_path):
    idx, q = _index(tmp_path, np.random.default_rng(3))
    before = _answers(idx, q)

    result = invoke_json("compact", "--index", idx)

    assert result["written"] and not result["upgraded"]
    assert (result["before"]["segments"], result["before"]["removed"]) == (3, 3)
    assert (result["after"]["segments"], result["after"]["removed"], result["after"]["stored"]) == (1, 0, 12)
    assert result["faces"] == 12
    after = _answers(idx, q)
    assert after[0] == before[0]  # the same photos, in the same order
    np.testing.assert_allclose(after[1], before[1], atol=1e-6)  # scores up to float32 rounding
    again = invoke("compact", "--index", idx)
    assert again.exit_code == 0 and "nothing to compact" in again.stdout


def test_compact_refuses_a_bad_budget_and_a_missing_index(tmp_path):
    idx, _ = _index(tmp_path, np.random.default_rng(4))
    r = invoke("compact", "--index", idx, "--memory-budget", "lots")
    assert r.exit_code == 1 and "cannot read 'lots' as a size" in r.stderr
    r = invoke("compact", "--index", tmp_path / "nothing")
    assert r.exit_code == 1 and "no index at" in r.stderr
