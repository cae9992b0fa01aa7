"""PairVerification: the logged accuracy is the pure metric on the embedding view's outputs."""

import keras
import numpy as np

from facesearch.embedder.evaluation.metrics import make_pairs, pair_scores, verify_pairs
from facesearch.train.callbacks import PairVerification
from facesearch.train.config import PRESETS
from facesearch.train.data import make_image_dataset, scan_training_folder
from facesearch.train.models import build_views

TINY = PRESETS["tiny"]


def test_pair_verification_logs_the_metric(synthetic_faces):
    _, query_dir = synthetic_faces
    data = scan_training_folder(query_dir).subset(np.arange(60))  # 6 identities
    pairs, same = make_pairs(data.labels, 100, seed=0)
    keras.utils.set_random_seed(0)
    views = build_views(TINY, data.num_classes)
    images = make_image_dataset(data.paths, TINY)

    embeddings = views.embedding_model.predict(images, verbose=0)
    want = verify_pairs(pair_scores(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]]), same, folds=10)
    assert want.folds == 10  # the k-fold figure, not the threshold fit on the pairs it is measured on

    # Without an embedding model it truncates the model it is attached to.
    callback = PairVerification(images, pairs, same)
    callback.set_model(views.train_model)
    callback.on_train_begin()
    logs = {"loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert logs == {"loss": 1.0, "val_pair_acc": want.accuracy, "val_pair_threshold": want.threshold,
                    "val_pair_auc": want.auc}
    assert callback.initial_accuracy == want.accuracy
