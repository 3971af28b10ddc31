import json

import keras
import numpy as np

from model.heads import MaskedLMHead, SentencePredictionHead
from model.position_embedding import PositionEmbedding


def _embedding(vocab=30, hidden=8):
    embedding = keras.layers.Embedding(vocab, hidden)
    embedding.build((None,))
    return embedding


def test_masked_lm_head_gathers_and_ties_weights():
    embedding = _embedding()
    head = MaskedLMHead(vocabulary_size=30, token_embedding=embedding)
    x = np.random.RandomState(0).randn(2, 6, 8).astype("float32")
    positions = np.array([[1, 4], [0, 5]], "int32")
    logits = np.asarray(head(x, masked_positions=positions))
    assert logits.shape == (2, 2, 30) and logits.dtype == np.float32
    # Reference: gather -> dense+gelu -> LN -> tied output + bias.
    w = {v.path.split("/", 1)[1]: np.asarray(v) for v in head.weights}
    g = np.take_along_axis(x, positions[:, :, None], axis=1)
    h = np.asarray(
        keras.activations.gelu(
            g @ w["transform_dense/kernel"] + w["transform_dense/bias"]
        )
    )
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-12) * w["transform_layer_norm/gamma"]
    h += w["transform_layer_norm/beta"]
    want = h @ np.asarray(embedding.embeddings).T + w["output_bias"]
    np.testing.assert_allclose(logits, want, atol=1e-4)
    # The table is shared, not copied: the head owns no [vocab, hidden] weight.
    assert all(tuple(v.shape) != (30, 8) for v in head.weights if "transform" in v.path)


def test_masked_lm_head_float32_logits_under_mixed_precision():
    embedding = _embedding()
    head = MaskedLMHead(30, token_embedding=embedding, dtype="mixed_bfloat16")
    logits = head(
        np.ones((1, 4, 8), "float32"), masked_positions=np.zeros((1, 2), "int32")
    )
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_sentence_head_shapes():
    head = SentencePredictionHead()
    assert tuple(head(np.ones((3, 8), "float32")).shape) == (3, 2)


def test_position_embedding_slices_table():
    layer = PositionEmbedding(sequence_length=10)
    out = np.asarray(layer(np.zeros((2, 4, 3), "float32")))
    assert out.shape == (2, 4, 3)
    np.testing.assert_allclose(out[1], np.asarray(layer.position_embeddings)[:4])


def test_config_round_trips():
    for layer in (
        MaskedLMHead(vocabulary_size=30, activation="gelu"),
        SentencePredictionHead(num_classes=3),
        PositionEmbedding(sequence_length=7),
    ):
        clone = layer.__class__.from_config(layer.get_config())
        assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(
            layer.get_config(), sort_keys=True
        )
