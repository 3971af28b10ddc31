import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from model.bert_backbone import BertBackbone, load_pretrained_backbone
from model.bert_pretrainer import BertPretrainer
from model.checkpoints.tf1 import (
    is_google_checkpoint,
    load_google_checkpoint,
    model_config_from_checkpoint,
)

V, H, I, L, P, NH = 40, 8, 16, 2, 16, 2


def _google_values(rng):
    values = {
        "bert/embeddings/word_embeddings": (V, H),
        "bert/embeddings/token_type_embeddings": (2, H),
        "bert/embeddings/position_embeddings": (P, H),
        "bert/embeddings/LayerNorm/gamma": (H,),
        "bert/embeddings/LayerNorm/beta": (H,),
        "bert/pooler/dense/kernel": (H, H),
        "bert/pooler/dense/bias": (H,),
        "cls/predictions/transform/dense/kernel": (H, H),
        "cls/predictions/transform/dense/bias": (H,),
        "cls/predictions/transform/LayerNorm/gamma": (H,),
        "cls/predictions/transform/LayerNorm/beta": (H,),
        "cls/predictions/output_bias": (V,),
        "cls/seq_relationship/output_weights": (2, H),
        "cls/seq_relationship/output_bias": (2,),
    }
    for i in range(L):
        g = f"bert/encoder/layer_{i}"
        for part in ("query", "key", "value"):
            values[f"{g}/attention/self/{part}/kernel"] = (H, H)
            values[f"{g}/attention/self/{part}/bias"] = (H,)
        values.update(
            {
                f"{g}/attention/output/dense/kernel": (H, H),
                f"{g}/attention/output/dense/bias": (H,),
                f"{g}/attention/output/LayerNorm/gamma": (H,),
                f"{g}/attention/output/LayerNorm/beta": (H,),
                f"{g}/intermediate/dense/kernel": (H, I),
                f"{g}/intermediate/dense/bias": (I,),
                f"{g}/output/dense/kernel": (I, H),
                f"{g}/output/dense/bias": (H,),
                f"{g}/output/LayerNorm/gamma": (H,),
                f"{g}/output/LayerNorm/beta": (H,),
            }
        )
    return {k: (0.3 * rng.randn(*s)).astype("float32") for k, s in values.items()}


def _write_tf1_checkpoint(prefix, values):
    """Saves with a TF1 graph + Saver, so names are exactly Google's."""
    with tf.Graph().as_default():
        for name, value in values.items():
            tf.compat.v1.Variable(value, name=name)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix)
    with open(os.path.join(os.path.dirname(prefix), "bert_config.json"), "w") as f:
        json.dump({"num_attention_heads": NH}, f)


def _ln(x, g, b):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * g + b


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def _reference_bert(w, ids, mask, seg):
    """google-research/bert's modeling.py forward pass, in numpy."""
    b, s = ids.shape
    e = "bert/embeddings/"
    x = w[e + "word_embeddings"][ids] + w[e + "position_embeddings"][:s]
    x = _ln(
        x + w[e + "token_type_embeddings"][seg],
        w[e + "LayerNorm/gamma"],
        w[e + "LayerNorm/beta"],
    )
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    for i in range(L):
        g = f"bert/encoder/layer_{i}/"

        def dense(t, name):
            return t @ w[g + name + "/kernel"] + w[g + name + "/bias"]

        def heads(t):
            return t.reshape(b, s, NH, H // NH).transpose(0, 2, 1, 3)

        q, k, v = (
            heads(dense(x, f"attention/self/{n}")) for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(H // NH) + bias
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ctx = (p @ v).transpose(0, 2, 1, 3).reshape(b, s, H)
        a = g + "attention/output/"
        x = _ln(
            x + dense(ctx, "attention/output/dense"),
            w[a + "LayerNorm/gamma"],
            w[a + "LayerNorm/beta"],
        )
        h = dense(_gelu(dense(x, "intermediate/dense")), "output/dense")
        x = _ln(x + h, w[g + "output/LayerNorm/gamma"], w[g + "output/LayerNorm/beta"])
    pooled = np.tanh(
        x[:, 0] @ w["bert/pooler/dense/kernel"] + w["bert/pooler/dense/bias"]
    )
    return x, pooled


@pytest.fixture
def google_checkpoint(tmp_path):
    values = _google_values(np.random.RandomState(0))
    prefix = str(tmp_path / "bert_model.ckpt")
    _write_tf1_checkpoint(prefix, values)
    return prefix, values


def _inputs():
    rng = np.random.RandomState(1)
    ids = rng.randint(0, V, size=(2, 9)).astype("int32")
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    seg = np.zeros_like(ids)
    seg[:, 4:] = 1
    return ids, mask, seg


def test_google_checkpoint_outputs_match_reference(google_checkpoint):
    prefix, values = google_checkpoint
    assert is_google_checkpoint(prefix)
    cfg = model_config_from_checkpoint(prefix)
    assert (cfg.vocabulary_size, cfg.num_layers, cfg.num_heads) == (V, L, NH)
    assert (cfg.hidden_dim, cfg.intermediate_dim, cfg.max_sequence_length) == (H, I, P)
    backbone = load_pretrained_backbone(prefix)
    ids, mask, seg = _inputs()
    out = backbone({"input_ids": ids, "input_mask": mask, "segment_ids": seg})
    want_seq, want_pooled = _reference_bert(values, ids, mask.astype("float32"), seg)
    real = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(out["sequence_output"])[real], want_seq[real], atol=1e-4
    )
    np.testing.assert_allclose(np.asarray(out["pooled_output"]), want_pooled, atol=1e-4)


def test_google_checkpoint_heads(google_checkpoint):
    prefix, values = google_checkpoint
    backbone = BertBackbone.from_model_config(model_config_from_checkpoint(prefix))
    pretrainer = BertPretrainer(backbone)
    load_google_checkpoint(backbone, prefix, pretrainer)
    ids, mask, seg = _inputs()
    positions = np.array([[1, 2], [3, 0]], "int32")
    out = pretrainer(
        {
            "input_ids": ids,
            "input_mask": mask,
            "segment_ids": seg,
            "masked_lm_positions": positions,
        }
    )
    seq, pooled = _reference_bert(values, ids, mask.astype("float32"), seg)
    t = "cls/predictions/transform/"
    x = np.take_along_axis(seq, positions[:, :, None], 1)
    x = _gelu(x @ values[t + "dense/kernel"] + values[t + "dense/bias"])
    x = _ln(x, values[t + "LayerNorm/gamma"], values[t + "LayerNorm/beta"])
    logits = (
        x @ values["bert/embeddings/word_embeddings"].T
        + values["cls/predictions/output_bias"]
    )
    np.testing.assert_allclose(np.asarray(out["mlm_logits"]), logits, atol=1e-3)
    nsp = pooled @ values["cls/seq_relationship/output_weights"].T
    nsp += values["cls/seq_relationship/output_bias"]
    np.testing.assert_allclose(np.asarray(out["sentence_logits"]), nsp, atol=1e-4)


def test_shape_mismatch_is_named(google_checkpoint):
    prefix, _ = google_checkpoint
    backbone = BertBackbone(V, L, NH, 2 * H, I, max_sequence_length=P)
    with pytest.raises(ValueError, match="word_embeddings"):
        load_google_checkpoint(backbone, prefix)


def test_our_files_are_not_google_checkpoints(tmp_path):
    assert not is_google_checkpoint(str(tmp_path / "missing.ckpt"))


def test_bert_config_hidden_act_relu_is_honoured(google_checkpoint):
    prefix, _ = google_checkpoint
    config = os.path.join(os.path.dirname(prefix), "bert_config.json")
    assert model_config_from_checkpoint(prefix).activation == "gelu"
    with open(config, "w") as f:
        json.dump({"num_attention_heads": NH, "hidden_act": "relu"}, f)
    assert model_config_from_checkpoint(prefix).activation == "relu"
