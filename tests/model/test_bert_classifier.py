import json

import keras
import numpy as np
import pytest

from model.bert_backbone import BertBackbone
from model.bert_classifier import BertClassifier


def _inputs(batch=3, seq=10, vocab=50):
    rng = np.random.RandomState(0)
    ids = rng.randint(5, vocab, size=(batch, seq)).astype("int32")
    mask = np.ones_like(ids)
    mask[0, seq // 2 :] = 0
    return {"input_ids": ids, "input_mask": mask, "segment_ids": 0 * ids}


@pytest.fixture
def backbone():
    return BertBackbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        dropout=0.0,
    )


def test_logits_shape_and_shared_backbone(backbone):
    classifier = BertClassifier(backbone, num_classes=3, dropout=0.0)
    logits = classifier(_inputs())
    assert tuple(logits.shape) == (3, 3)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    # Composition: the backbone's variables are the classifier's.
    backbone_ids = {id(v) for v in backbone.weights}
    assert backbone_ids <= {id(v) for v in classifier.weights}
    assert len(classifier.trainable_weights) == len(backbone.trainable_weights) + 2


def test_logits_follow_pooled_output(backbone):
    classifier = BertClassifier(backbone, num_classes=2, dropout=0.0)
    inputs = _inputs()
    pooled = backbone(inputs)["pooled_output"]
    kernel, bias = classifier.output_dense.get_weights()
    np.testing.assert_allclose(
        classifier(inputs), np.asarray(pooled) @ kernel + bias, rtol=1e-5, atol=1e-6
    )


def test_dropout_rate_one_zeroes_features_in_training(backbone):
    classifier = BertClassifier(backbone, num_classes=2, dropout=0.999999)
    logits = classifier(_inputs(), training=True)
    bias = classifier.output_dense.get_weights()[1]
    # Degenerate rate: every pooled feature dropped, only the bias is left.
    np.testing.assert_allclose(logits, np.tile(bias, (3, 1)), atol=1e-3)


def test_config_round_trip(backbone):
    classifier = BertClassifier(backbone, num_classes=2, dropout=0.2)
    clone = BertClassifier.from_config(classifier.get_config())
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(
        classifier.get_config(), sort_keys=True
    )


@pytest.mark.slow
def test_saved_keras_model_round_trip(backbone, tmp_path):
    classifier = BertClassifier(backbone, num_classes=2, dropout=0.0)
    path = str(tmp_path / "classifier.keras")
    classifier.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        restored(_inputs()), classifier(_inputs()), rtol=1e-5, atol=1e-6
    )
