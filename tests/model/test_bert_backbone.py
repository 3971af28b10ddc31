import json

import keras
import numpy as np
import pytest

from model.bert_backbone import BertBackbone, load_pretrained_backbone


def _inputs(batch=2, seq=12, vocab=50):
    rng = np.random.RandomState(0)
    ids = rng.randint(5, vocab, size=(batch, seq)).astype("int32")
    mask = np.ones_like(ids)
    mask[0, seq // 2 :] = 0
    return {"input_ids": ids, "input_mask": mask, "segment_ids": 0 * ids}


@pytest.fixture
def backbone():
    return BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=32,
        dropout=0.0,
    )


def test_output_shapes_any_length(backbone):
    for seq in (12, 32):
        out = backbone(_inputs(seq=seq))
        assert tuple(out["sequence_output"].shape) == (2, seq, 8)
        assert tuple(out["pooled_output"].shape) == (2, 8)
    assert tuple(backbone.token_embedding.embeddings.shape) == (50, 8)


def test_config_round_trip(backbone):
    clone = BertBackbone.from_config(backbone.get_config())
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(
        backbone.get_config(), sort_keys=True
    )


def test_from_model_config(tiny_model_config):
    backbone = BertBackbone.from_model_config(tiny_model_config)
    assert backbone.num_layers == tiny_model_config.num_layers
    assert backbone.hidden_dim == tiny_model_config.hidden_dim


def test_mixed_precision_outputs():
    backbone = BertBackbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=32,
        dtype="mixed_bfloat16",
    )
    out = backbone(_inputs())
    assert keras.backend.standardize_dtype(out["sequence_output"].dtype) == "bfloat16"
    assert backbone.token_embedding.embeddings.dtype == "float32"


def test_load_pretrained_backbone_from_model_dir(tmp_path, backbone):
    from configs.loader import dump_config, load_config

    cfg = load_config(
        overrides=[
            "model.vocabulary_size=50",
            "model.num_layers=2",
            "model.num_heads=2",
            "model.hidden_dim=8",
            "model.intermediate_dim=16",
            "model.max_sequence_length=32",
            "model.dropout=0.0",
            "data.max_seq_length=32",
            "data.max_predictions_per_seq=5",
            "finetune.max_seq_length=32",
        ]
    )
    dump_config(cfg, str(tmp_path))
    backbone.save_weights(str(tmp_path / "encoder.weights.h5"))
    loaded = load_pretrained_backbone(str(tmp_path))
    x = _inputs()
    np.testing.assert_allclose(
        np.asarray(loaded(x)["pooled_output"]),
        np.asarray(backbone(x)["pooled_output"]),
        atol=1e-6,
    )


def test_load_pretrained_backbone_rejects_other_paths(tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint; expected"):
        load_pretrained_backbone(str(tmp_path))
