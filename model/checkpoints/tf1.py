"""Google's TF1 BERT checkpoints (`bert/...` names) -> our Keras layers.

google-research/bert releases `bert_model.ckpt.*` files whose variables are
named `bert/embeddings/word_embeddings`, `bert/encoder/layer_N/attention/
self/query/kernel`, ... . `load_google_checkpoint` reads them with
`tf.train.load_checkpoint` and assigns them to a `BertBackbone` (and, if
given, a `BertPretrainer`'s heads). Our attention fuses query/key/value in
one `[hidden, 3 * hidden]` kernel, so Google's three kernels are concatenated
along the output axis (each is already laid out heads-major).
"""

import json
import os
import re

import numpy as np

from configs.schema import ModelConfig

WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"


def is_google_checkpoint(path):
    """True if `path` is a TF checkpoint prefix holding Google BERT names."""
    import tensorflow as tf

    try:
        names = {name for name, _ in tf.train.list_variables(path)}
    except (tf.errors.NotFoundError, ValueError, tf.errors.DataLossError):
        return False
    return WORD_EMBEDDINGS in names


def model_config_from_checkpoint(path):
    """Infers a `ModelConfig` from the checkpoint's shapes.

    `num_heads` is not visible in shapes: it comes from a
    `bert_config.json` beside the checkpoint (Google ships one), else
    `hidden_dim // 64` (true for every released BERT).
    """
    import tensorflow as tf

    shapes = dict(tf.train.list_variables(path))
    vocab, hidden = shapes[WORD_EMBEDDINGS]
    layers = {
        int(m.group(1))
        for name in shapes
        for m in [re.match(r"bert/encoder/layer_(\d+)/", name)]
        if m
    }
    config_json = os.path.join(os.path.dirname(path), "bert_config.json")
    num_heads = max(1, hidden // 64)
    if os.path.exists(config_json):
        with open(config_json, encoding="utf-8") as f:
            num_heads = json.load(f).get("num_attention_heads", num_heads)
    return ModelConfig(
        vocabulary_size=vocab,
        num_layers=len(layers),
        num_heads=num_heads,
        hidden_dim=hidden,
        intermediate_dim=shapes["bert/encoder/layer_0/intermediate/dense/kernel"][1],
        max_sequence_length=shapes["bert/embeddings/position_embeddings"][0],
        num_segments=shapes["bert/embeddings/token_type_embeddings"][0],
    )


def backbone_variable_map(num_layers):
    """Returns [(our weight path, google name or tuple of names to concat)]."""
    mapping = [
        ("token_embedding/embeddings", WORD_EMBEDDINGS),
        ("position_embedding/embeddings", "bert/embeddings/position_embeddings"),
        ("segment_embedding/embeddings", "bert/embeddings/token_type_embeddings"),
        ("embeddings_layer_norm/gamma", "bert/embeddings/LayerNorm/gamma"),
        ("embeddings_layer_norm/beta", "bert/embeddings/LayerNorm/beta"),
    ]
    for i in range(num_layers):
        ours = f"transformer_layer_{i}"
        g = f"bert/encoder/layer_{i}"
        for kind in ("kernel", "bias"):
            mapping.append(
                (
                    f"{ours}/self_attention_qkv/{kind}",
                    tuple(
                        f"{g}/attention/self/{part}/{kind}"
                        for part in ("query", "key", "value")
                    ),
                )
            )
        mapping += [
            (f"{ours}/self_attention_output/{k}", f"{g}/attention/output/dense/{k}")
            for k in ("kernel", "bias")
        ]
        mapping += [
            (
                f"{ours}/self_attention_layer_norm/{k}",
                f"{g}/attention/output/LayerNorm/{k}",
            )
            for k in ("gamma", "beta")
        ]
        mapping += [
            (
                f"{ours}/feedforward_intermediate_dense/{k}",
                f"{g}/intermediate/dense/{k}",
            )
            for k in ("kernel", "bias")
        ]
        mapping += [
            (f"{ours}/feedforward_output_dense/{k}", f"{g}/output/dense/{k}")
            for k in ("kernel", "bias")
        ]
        mapping += [
            (f"{ours}/feedforward_layer_norm/{k}", f"{g}/output/LayerNorm/{k}")
            for k in ("gamma", "beta")
        ]
    mapping += [
        ("pooled_dense/kernel", "bert/pooler/dense/kernel"),
        ("pooled_dense/bias", "bert/pooler/dense/bias"),
    ]
    return mapping


# Pretraining heads: our weight path (inside BertPretrainer) -> google name.
# Google stores the NSP kernel transposed ([2, hidden]).
HEAD_VARIABLE_MAP = [
    ("mlm_head/transform_dense/kernel", "cls/predictions/transform/dense/kernel"),
    ("mlm_head/transform_dense/bias", "cls/predictions/transform/dense/bias"),
    (
        "mlm_head/transform_layer_norm/gamma",
        "cls/predictions/transform/LayerNorm/gamma",
    ),
    (
        "mlm_head/transform_layer_norm/beta",
        "cls/predictions/transform/LayerNorm/beta",
    ),
    ("mlm_head/output_bias", "cls/predictions/output_bias"),
    ("sentence_head/output_dense/kernel", "cls/seq_relationship/output_weights"),
    ("sentence_head/output_dense/bias", "cls/seq_relationship/output_bias"),
]


def load_google_checkpoint(backbone, path, pretrainer=None):
    """Assigns a Google TF1 BERT checkpoint's values to our weights.

    Args:
        backbone: a built `BertBackbone` of matching sizes.
        path: checkpoint prefix (e.g. `.../bert_model.ckpt`).
        pretrainer: optional `BertPretrainer` whose MLM and sentence heads
            also receive `cls/...` values where the checkpoint has them.

    Raises:
        ValueError: naming the first missing variable or shape mismatch.
    """
    import tensorflow as tf

    reader = tf.train.load_checkpoint(path)
    weights = {w.path: w for w in backbone.weights}
    pairs = [
        (weights.get(ours), ours, names)
        for ours, names in backbone_variable_map(backbone.num_layers)
    ]
    if pretrainer is not None:
        head_weights = {_strip_model_prefix(w.path): w for w in pretrainer.weights}
        pairs += [
            (head_weights.get(ours), ours, name)
            for ours, name in HEAD_VARIABLE_MAP
            if reader.has_tensor(name)
        ]
    for variable, ours, names in pairs:
        if variable is None:
            raise ValueError(f"our model has no weight {ours}")
        value = _read(reader, names, path)
        if ours.startswith("sentence_head/output_dense/kernel"):
            value = value.T
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{names} has shape {value.shape} in {path}, "
                f"but {ours} is {tuple(variable.shape)}"
            )
        variable.assign(value.astype(variable.dtype))


def _read(reader, names, path):
    names = (names,) if isinstance(names, str) else names
    for name in names:
        if not reader.has_tensor(name):
            raise ValueError(f"{path} lacks variable {name}")
    values = [reader.get_tensor(name) for name in names]
    return values[0] if len(values) == 1 else np.concatenate(values, axis=-1)


def _strip_model_prefix(weight_path):
    # Weights of sublayers created inside a Model have no model prefix in
    # Keras 3, but be lenient if one appears.
    return (
        weight_path.split("/", 1)[1] if weight_path.startswith("bert_") else weight_path
    )
