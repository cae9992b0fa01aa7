"""List-file datasets: line-numbered errors, dense label remap, and training from one."""

import dataclasses

import numpy as np
import pytest

from facesearch.embedder.core.errors import DatasetError
from facesearch.train.config import PRESETS
from facesearch.train.data import load_labels
from facesearch.train.listfile import parse_list_file, remap_labels


def test_parse_list_file_remaps_labels_densely(tmp_path):
    (tmp_path / "list.txt").write_text(
        "# CASIA style\n0000045/001.jpg 7\n\n0000099/001.jpg 12\n0000045/002.jpg 7\nsome dir/a b.jpg 100\n")
    data = parse_list_file(tmp_path / "list.txt", tmp_path)
    assert data.paths == tuple(str(tmp_path / p) for p in
                               ("0000045/001.jpg", "0000099/001.jpg", "0000045/002.jpg", "some dir/a b.jpg"))
    # Integer labels sort numerically (7 < 12 < 100), not as text ("100" < "12" < "7").
    assert data.class_names == ("7", "12", "100")
    np.testing.assert_array_equal(data.labels, [0, 1, 0, 2])
    assert data.labels.dtype == np.int32


def test_remap_labels_of_names():
    labels, names = remap_labels(["bob", "alice", "bob", "carol"])
    assert names == ("alice", "bob", "carol")
    np.testing.assert_array_equal(labels, [1, 0, 1, 2])
    assert [names[i] for i in labels] == ["bob", "alice", "bob", "carol"]


def test_bad_lines_are_reported_with_line_numbers(tmp_path):
    (tmp_path / "list.txt").write_text("a/1.jpg 0\nonlyonefield\na/2.jpg 0\n/abs/3.jpg 1\n../up.jpg 1\n")
    with pytest.raises(DatasetError) as e:
        parse_list_file(tmp_path / "list.txt", tmp_path)
    message = str(e.value)
    assert "3 malformed line(s)" in message
    assert "line 2: expected 'relative/path.jpg label', got 'onlyonefield'" in message
    assert "line 4:" in message and "line 5:" in message and "line 1:" not in message and "line 3:" not in message


def test_missing_or_empty_list_file(tmp_path):
    with pytest.raises(DatasetError, match="cannot read list file"):
        parse_list_file(tmp_path / "missing.txt", tmp_path)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DatasetError, match="lists no images"):
        parse_list_file(tmp_path / "empty.txt", tmp_path)
    with pytest.raises(DatasetError, match="is not a folder"):
        parse_list_file(tmp_path / "empty.txt", tmp_path / "nope")


def test_train_from_a_list_file_saves_the_label_mapping(tmp_path):
    from facesearch.train.fit import train
    from facesearch.train.synthetic import make_synthetic_faces

    paths = make_synthetic_faces(tmp_path / "images", identities=3, per_identity=4)
    # CASIA-style sparse integer labels: 10, 20, 30 -> 0, 1, 2.
    lines = [f"{p.relative_to(tmp_path / 'images')} {10 * (int(p.parent.name[3:]) + 1)}" for p in paths]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    config = dataclasses.replace(PRESETS["tiny"], epochs=1, batch_size=4, val_fraction=0.25)
    result = train(tmp_path / "images", tmp_path / "run", config, list_file=tmp_path / "list.txt", verbose=0)
    assert result.num_classes == 3 and (result.num_train_images, result.num_val_images) == (9, 3)
    assert load_labels(tmp_path / "run") == ["10", "20", "30"]
