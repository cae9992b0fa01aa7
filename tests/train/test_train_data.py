"""Folder datasets: dense sorted labels, clear errors, hold-out split, and the tf.data pipelines."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.embedder.core.errors import DatasetError
from facesearch.train.config import PRESETS
from facesearch.train.data import (
    find_unreadable,
    load_labels,
    make_image_dataset,
    make_train_dataset,
    save_labels,
    scan_training_folder,
    split_holdout,
)

CONFIG = dataclasses.replace(PRESETS["tiny"], batch_size=2, seed=0)


def write_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def gradient_image(height=112, width=96):
    """Left dark, right bright: a horizontal flip is visible in the mean of either half."""
    row = np.linspace(0, 255, width)
    return np.repeat(np.tile(row, (height, 1))[..., None], 3, axis=2)


def test_scan_folder_labels_are_dense_and_sorted(tmp_path):
    for name in ["bob/2.png", "bob/1.JPG", "alice/a.jpeg", "dave/x.png", ".hidden/y.png"]:
        write_image(tmp_path / name, np.zeros((4, 4, 3)))
    (tmp_path / "carol").mkdir()  # no images: not a class
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("a file beside the folders")
    data = scan_training_folder(tmp_path)
    assert data.class_names == ("alice", "bob", "dave")
    assert [p.split("/")[-2:] for p in data.paths] == [["alice", "a.jpeg"], ["bob", "1.JPG"], ["bob", "2.png"],
                                                     ["dave", "x.png"]]
    np.testing.assert_array_equal(data.labels, [0, 1, 1, 2])
    assert data.labels.dtype == np.int32 and data.num_classes == 3


def test_scan_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_training_folder(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no identity sub-folders"):
        scan_training_folder(tmp_path)
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="1 identity folders but no images"):
        scan_training_folder(tmp_path)


def test_labels_json_round_trip(tmp_path):
    path = save_labels(tmp_path, ["alice", "bob"])
    assert path.name == "labels.json"
    assert load_labels(tmp_path) == ["alice", "bob"]
    with pytest.raises(DatasetError, match="cannot read label mapping"):
        load_labels(tmp_path / "missing.json")


def test_split_holdout_is_a_seeded_partition():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    train, held = split_holdout(labels, 0.2, seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(len(labels)))
    assert np.bincount(labels[held], minlength=4).tolist() == [2, 1, 0, 0]  # floor(0.2 k), one kept
    again = split_holdout(labels, 0.2, seed=0)
    np.testing.assert_array_equal(held, again[1])
    assert not np.array_equal(held, split_holdout(labels, 0.2, seed=1)[1])
    assert split_holdout(labels, 0.99, seed=0)[1].size == len(labels) - 4  # every class keeps one


def test_image_dataset_decodes_resizes_and_normalises(tmp_path):
    write_image(tmp_path / "white.png", np.full((50, 40, 3), 255))
    Image.fromarray(np.full((30, 30), 0, np.uint8)).save(tmp_path / "grey.png")  # one channel
    Image.fromarray(np.full((30, 30, 4), 127, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    write_image(tmp_path / "photo.jpg", np.full((112, 96, 3), 200))
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(tmp_path / "deep.png")  # 16-bit grey
    paths = [str(tmp_path / n) for n in ["white.png", "grey.png", "rgba.png", "photo.jpg", "deep.png"]]
    images = np.concatenate(list(make_image_dataset(paths, CONFIG).as_numpy_iterator()))
    assert images.shape == (5, 112, 96, 3) and images.dtype == np.float32
    np.testing.assert_allclose(images[0], (255 - 127.5) / 128)
    np.testing.assert_allclose(images[1], -127.5 / 128)
    np.testing.assert_allclose(images[2], -0.5 / 128)
    np.testing.assert_allclose(images[3], (200 - 127.5) / 128, atol=2 / 128)  # JPEG rounding
    np.testing.assert_allclose(images[4], (255 - 127.5) / 128)


def test_train_dataset_batches_flips_and_is_seeded(tmp_path):
    for i in range(4):
        write_image(tmp_path / f"id_{i % 2}" / f"{i}.png", gradient_image())
    data = scan_training_folder(tmp_path)

    def images_of(config, batches=8):
        return np.concatenate([b[0]["image"] for b in make_train_dataset(data, config).take(batches)
                               .as_numpy_iterator()])

    def flipped(images):
        return images[:, :, :48].mean(axis=(1, 2, 3)) > images[:, :, 48:].mean(axis=(1, 2, 3))

    inputs, target = next(make_train_dataset(data, CONFIG).as_numpy_iterator())
    assert inputs["image"].shape == (2, 112, 96, 3)
    np.testing.assert_array_equal(inputs["label"], target)
    assert target.shape == (2, 2) and np.all(target.sum(axis=1) == 1)
    images = images_of(CONFIG)
    assert 0 < flipped(images).sum() < len(images)  # random flips, both ways
    np.testing.assert_array_equal(images_of(CONFIG), images)  # seeded: the same stream again
    assert not np.array_equal(flipped(images_of(dataclasses.replace(CONFIG, seed=1))), flipped(images))
    assert not flipped(images_of(dataclasses.replace(CONFIG, flip=False))).any()


def test_find_unreadable(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3)))
    (tmp_path / "b.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "c.jpg").write_bytes(b"")
    write_image(tmp_path / "d.jpg", np.zeros((4, 4, 3)))
    paths = [str(tmp_path / n) for n in ["a.png", "b.png", "c.jpg", "d.jpg", "missing.png"]]
    assert find_unreadable(paths) == paths[1:3] + paths[4:]


def test_train_dataset_skips_unreadable_images(tmp_path):
    write_image(tmp_path / "a" / "0.png", np.full((8, 8, 3), 10))
    write_image(tmp_path / "b" / "0.png", np.full((8, 8, 3), 250))
    (tmp_path / "b" / "1.png").write_bytes(b"not a png")
    data = scan_training_folder(tmp_path)
    assert len(data.paths) == 3
    config = dataclasses.replace(CONFIG, batch_size=1)
    images = [b[0]["image"] for b in make_train_dataset(data, config).take(6).as_numpy_iterator()]
    assert len(images) == 6  # the broken file is skipped, the stream goes on


@pytest.mark.parametrize("cache", ["memory", "file"])
def test_cached_stream_yields_the_same_images(tmp_path, cache):
    from facesearch.train.synthetic import make_synthetic_faces

    make_synthetic_faces(tmp_path / "data", identities=3, per_identity=4)
    data = scan_training_folder(tmp_path / "data")
    config = dataclasses.replace(CONFIG, batch_size=4)
    cached = dataclasses.replace(config, cache="memory" if cache == "memory" else str(tmp_path / "cache" / "train"))
    if cache == "file":
        (tmp_path / "cache").mkdir()

    def batches(c, skip=0, n=7):  # 7 batches of 4: more than two epochs of 12 images, so reshuffles and flips count
        return [(x["image"], y) for x, y in make_train_dataset(data, c, skip_batches=skip).take(n).as_numpy_iterator()]

    plain = batches(config)
    for (image, label), (want_image, want_label) in zip(batches(cached), plain, strict=True):
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(label, want_label)
    # A resumed stream (skip) matches too, and a file cache is written and then read back.
    for (image, _), (want, _) in zip(batches(cached, skip=3, n=4), plain[3:], strict=True):
        np.testing.assert_array_equal(image, want)
    if cache == "file":
        assert list((tmp_path / "cache").glob("train*.index"))
    # Proof that the images come from the cache: after the first batch every file turns black.
    stream = make_train_dataset(data, cached).take(7).as_numpy_iterator()
    got = [next(stream)[0]["image"]]
    for path in data.paths:
        write_image(Path(path), np.zeros((112, 96, 3)))
    got += [x["image"] for x, _ in stream]
    for image, (want, _) in zip(got, plain, strict=True):
        np.testing.assert_array_equal(image, want)
