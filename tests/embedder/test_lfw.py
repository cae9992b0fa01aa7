"""LFW pair files: both formats, the protocol's folds, and precise errors."""

import os
from pathlib import Path

import numpy as np
import pytest

from facesearch.embedder.core.errors import DatasetError
from facesearch.embedder.evaluation.lfw import find_images_dir, read_pairs
from facesearch.embedder.evaluation.metrics import stratified_folds

LFW = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).parents[3] / "shared" / "lfw"))

VIEW2 = """2\t2
Ann\t1\t2
Bob\t1\t3
Ann\t1\tBob\t2
Cid\t1\tAnn\t2
Cid\t1\t2

Bob\t2\t3
Ann\t2\tCid\t2
Bob\t1\tCid\t1
"""


def test_view2_file_gives_images_pairs_and_folds(tmp_path):
    (tmp_path / "pairs.txt").write_text(VIEW2)
    pl = read_pairs(tmp_path / "pairs.txt")
    assert pl.images == ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg", "Bob/Bob_0002.jpg",
                         "Bob/Bob_0003.jpg", "Cid/Cid_0001.jpg", "Cid/Cid_0002.jpg"]
    named = [(pl.images[a], pl.images[b]) for a, b in pl.pairs]
    assert named[0] == ("Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg")
    assert named[3] == ("Cid/Cid_0001.jpg", "Ann/Ann_0002.jpg")
    np.testing.assert_array_equal(pl.same, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(pl.folds, [0, 0, 0, 0, 1, 1, 1, 1])  # the blank line does not count


def test_view1_file_has_no_folds(tmp_path):
    (tmp_path / "dev.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 1\n")
    pl = read_pairs(tmp_path / "dev.txt")
    assert pl.folds is None and pl.same.tolist() == [True, False] and len(pl.images) == 3


@pytest.mark.parametrize("text, message", [
    ("2 1\nAnn 1 2\nAnn 1 Bob x\nAnn 1 2\nAnn 1 Bob 1\n", r"dev.txt:3: expected 'name n1 n2'.*'Ann 1 Bob x'"),
    ("1\nAnn 1 2\nAnn 0 Bob 1\n", r"dev.txt:3: .*numbers >= 1"),
    ("1\nAnn 1 2 3 4 5\nAnn 1 Bob 1\n", r"dev.txt:2: "),
    ("10 300\nAnn 1 2\n", r"announces 10 x 2 x 300 = 6000 pairs \(line 1\) but holds 1"),
    ("Ann 1 2\n", r"dev.txt:1: expected a header"),
    ("\n\n", r"is empty"),
])
def test_bad_files_name_the_line(tmp_path, text, message):
    (tmp_path / "dev.txt").write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_pairs(tmp_path / "dev.txt")


def test_missing_file_and_image_folder(tmp_path):
    with pytest.raises(DatasetError, match="cannot read pair file"):
        read_pairs(tmp_path / "nope.txt")
    with pytest.raises(DatasetError, match="no LFW image folder"):
        find_images_dir(tmp_path)
    (tmp_path / "lfw_funneled").mkdir()
    assert find_images_dir(tmp_path) == tmp_path / "lfw_funneled"


@pytest.mark.skipif(not (LFW / "pairs.txt").is_file(), reason="LFW not found (set FACESEARCH_LFW)")
def test_real_pairs_txt_follows_the_protocol():
    pl = read_pairs(LFW / "pairs.txt")
    assert len(pl.pairs) == 6000
    for k in range(10):
        block = slice(600 * k, 600 * (k + 1))
        assert np.all(pl.folds[block] == k)
        assert pl.same[block][:300].all() and not pl.same[block][300:].any()  # 300 positives, then 300 negatives
    np.testing.assert_array_equal(stratified_folds(pl.same, 10), pl.folds)
    images = find_images_dir(LFW)
    assert all((images / p).is_file() for p in pl.images)


def test_locate_images_accepts_jpg_and_png_and_names_the_missing(tmp_path):
    from facesearch.embedder.evaluation.lfw import locate_images

    (tmp_path / "dev.txt").write_text("1\nA.J._Cook 1 2\nA.J._Cook 1 Bob 1\n")
    pl = read_pairs(tmp_path / "dev.txt")
    for relative in ("A.J._Cook/A.J._Cook_0001.jpg", "A.J._Cook/A.J._Cook_0002.png", "Bob/Bob_0001.png"):
        (tmp_path / "crops" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "crops" / relative).write_bytes(b"")
    assert locate_images(pl, tmp_path / "crops") == [
        str(tmp_path / "crops" / p) for p in ("A.J._Cook/A.J._Cook_0001.jpg", "A.J._Cook/A.J._Cook_0002.png",
                                              "Bob/Bob_0001.png")]
    (tmp_path / "crops" / "Bob" / "Bob_0001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 pair images are missing .* Bob/Bob_0001.jpg"):
        locate_images(pl, tmp_path / "crops")
    with pytest.raises(DatasetError, match="does not exist"):
        locate_images(pl, tmp_path / "nowhere")
