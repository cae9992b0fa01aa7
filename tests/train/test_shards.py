"""Per-identity TFRecord shards: round trip, same-identity pairs in every block of two, training from them."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.train.config import PRESETS
from facesearch.train.data import make_image_dataset, scan_training_folder
from facesearch.train.shards import load_shards, make_shard_train_dataset, read_val_shard, write_shards

CONFIG = dataclasses.replace(PRESETS["tiny"], batch_size=8, flip=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from facesearch.train.synthetic import make_synthetic_faces

    root = tmp_path_factory.mktemp("faces")
    make_synthetic_faces(root, identities=4, per_identity=5)
    # Unequal and odd identity sizes: 5, 3, 1 and 4 images.
    for identity, keep in enumerate((5, 3, 1, 4)):
        folder = root / f"id_{identity:02d}"
        for extra in sorted(folder.iterdir())[keep:]:
            extra.unlink()
        folder.rename(root / f"person_{identity}")
    (root / "person_1" / "broken.png").write_bytes(b"not a png")
    return root


def test_round_trip_keeps_every_image_and_label(folder, tmp_path):
    data = scan_training_folder(folder)
    messages = []
    shards = write_shards(data, tmp_path / "shards", val_fraction=0.25, seed=0,
                          progress=lambda phase, done, total: messages.append((done, total)))
    assert messages[-1] == (13, 13)  # the broken file is not counted
    assert shards.skipped == (str(folder / "person_1" / "broken.png"),)
    assert shards.class_names == ("person_0", "person_1", "person_2", "person_3")
    reloaded = load_shards(tmp_path / "shards")
    assert (reloaded.files, reloaded.val_file, reloaded.skipped) == (shards.files, shards.val_file, shards.skipped)
    # 25% of 5, 3, 1, 4 rounded down: 1, 0, 0, 1 held out.
    np.testing.assert_array_equal(shards.counts, [4, 3, 1, 3])
    assert shards.num_val == 2 and len(shards.files) == 4

    # Decoded shard images equal the original files' pixels under the same label.
    val_images, val_labels = read_val_shard(shards, CONFIG)
    assert sorted(val_labels.tolist()) == [0, 3]
    originals = {}
    good = [p for p in data.paths if not p.endswith("broken.png")]
    good_labels = [int(lab) for p, lab in zip(data.paths, data.labels) if not p.endswith("broken.png")]
    for image, label in zip(make_image_dataset(good, CONFIG, 1).unbatch().as_numpy_iterator(), good_labels):
        originals.setdefault(label, []).append(image)
    for image, label in zip(val_images.unbatch().as_numpy_iterator(), val_labels):
        assert any(np.array_equal(image, o) for o in originals[label])
    records = make_shard_train_dataset(shards, CONFIG).unbatch().take(40)
    for (inputs, one_hot) in records.as_numpy_iterator():
        label = int(np.argmax(one_hot))
        assert any(np.array_equal(inputs["image"], o) for o in originals[label])


def test_every_block_of_two_shares_an_identity(folder, tmp_path):
    shards = write_shards(scan_training_folder(folder), tmp_path / "shards", val_fraction=0.0)
    batches = make_shard_train_dataset(shards, CONFIG).take(12)
    labels = np.concatenate([np.argmax(y, axis=1) for _, y in batches.as_numpy_iterator()])
    pairs = labels.reshape(-1, 2)
    np.testing.assert_array_equal(pairs[:, 0], pairs[:, 1])
    assert len(set(labels.tolist())) == 4  # every identity is visited, the one-image one included
    # Seeded: the same stream again, and a resume skips whole batches of it.
    again = np.concatenate([np.argmax(y, axis=1) for _, y in
                            make_shard_train_dataset(shards, CONFIG, skip_batches=3).take(9).as_numpy_iterator()])
    np.testing.assert_array_equal(again, labels[24:])
    with pytest.raises(ModelSpecError, match="batch_size must be even"):
        make_shard_train_dataset(shards, dataclasses.replace(CONFIG, batch_size=7))


def test_train_from_shards(folder, tmp_path):
    from facesearch.train.fit import train

    write_shards(scan_training_folder(folder), tmp_path / "shards", val_fraction=0.25)
    config = dataclasses.replace(CONFIG, epochs=1, batch_size=4, val_pairs=10)
    result = train(tmp_path / "shards", tmp_path / "run", config, verbose=0)
    # 4 + 3 + 1 + 3 images, padded to pairs: 4 + 4 + 2 + 4 = 14 per epoch -> 4 steps of 4.
    assert (result.num_classes, result.num_train_images, result.num_val_images) == (4, 11, 2)
    assert result.optimizer_steps == 4 and len(result.skipped_images) == 1
    assert tf.io.gfile.exists(str(tmp_path / "run" / "model.keras"))
