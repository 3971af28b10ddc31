import json

import numpy as np
import pytest

from model.bert_backbone import BertBackbone
from model.bert_pretrainer import (
    BertPretrainer,
    combine_loss_terms,
    pretraining_loss_terms,
    pretraining_losses,
)


@pytest.fixture
def pretrainer():
    backbone = BertBackbone(
        vocabulary_size=40,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        dropout=0.0,
    )
    return BertPretrainer(backbone)


def _batch():
    ids = np.arange(2 * 10).reshape(2, 10).astype("int32") % 40
    return {
        "input_ids": ids,
        "input_mask": np.ones_like(ids),
        "segment_ids": np.zeros_like(ids),
        "masked_lm_positions": np.array([[1, 2, 0], [3, 4, 5]], "int32"),
        "masked_lm_ids": np.array([[5, 6, 0], [7, 8, 9]], "int32"),
        "masked_lm_weights": np.array([[1, 1, 0], [1, 1, 1]], "float32"),
        "next_sentence_labels": np.array([[0], [1]], "int32"),
    }


def test_outputs_and_tied_embedding(pretrainer):
    batch = _batch()
    out = pretrainer({k: batch[k] for k in pretrainer.input})
    assert tuple(out["mlm_logits"].shape) == (2, 3, 40)
    assert tuple(out["sentence_logits"].shape) == (2, 2)
    # One token table in the whole model (tied, not duplicated).
    tables = [w for w in pretrainer.weights if tuple(w.shape) == (40, 8)]
    assert len(tables) == 1


def test_losses_weighted_by_masked_lm_weights(pretrainer):
    batch = _batch()
    out = pretrainer({k: batch[k] for k in pretrainer.input})
    losses = pretraining_losses(batch, out)
    logits = np.asarray(out["mlm_logits"])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, batch["masked_lm_ids"][:, :, None], -1)[..., 0]
    w = batch["masked_lm_weights"]
    assert float(losses["mlm_loss"]) == pytest.approx(
        (ce * w).sum() / w.sum(), rel=1e-5
    )
    s = np.asarray(out["sentence_logits"])
    slp = s - np.log(np.exp(s).sum(-1, keepdims=True))
    want = -slp[[0, 1], [0, 1]].mean()
    assert float(losses["sentence_loss"]) == pytest.approx(want, rel=1e-5)
    assert float(losses["loss"]) == pytest.approx(
        float(losses["mlm_loss"]) + float(losses["sentence_loss"]), rel=1e-6
    )


def test_replica_shares_add_up_to_the_global_loss(pretrainer):
    batch = _batch()
    out = pretrainer({k: batch[k] for k in pretrainer.input})
    terms = {k: np.asarray(v) for k, v in pretraining_loss_terms(batch, out).items()}
    total_w = terms["mlm_weight"].sum()
    shares = [
        combine_loss_terms({k: v[i] for k, v in terms.items()}, total_w, 2)["loss"]
        for i in range(2)
    ]
    assert float(sum(shares)) == pytest.approx(
        float(pretraining_losses(batch, out)["loss"]), rel=1e-5
    )


def test_config_round_trip(pretrainer):
    clone = BertPretrainer.from_config(pretrainer.get_config())
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(
        pretrainer.get_config(), sort_keys=True
    )
