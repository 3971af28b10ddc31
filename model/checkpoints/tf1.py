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

from configs import fileio
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
    # Google's released checkpoints were trained with the erf GELU (their
    # bert_config.json says "gelu"); "relu" is honoured (our relu exports).
    activation = "gelu"
    if os.path.exists(config_json):
        with open(config_json, encoding="utf-8") as f:
            bert_config = json.load(f)
        num_heads = bert_config.get("num_attention_heads", num_heads)
        if bert_config.get("hidden_act") == "relu":
            activation = "relu"
    return ModelConfig(
        activation=activation,
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


# === Writing a checkpoint (the same name map, the other way) ===
CHECKPOINT_PREFIX = "bert_model.ckpt"
CONFIG_FILE = "bert_config.json"
# google-research/bert's run_classifier.py `create_model`: the logits layer
# is `output_weights` `[num_labels, hidden]` (transposed) and `output_bias`.
CLASSIFIER_VARIABLE_MAP = [
    ("logits/kernel", "output_weights"),
    ("logits/bias", "output_bias"),
]
_TRANSPOSED = {"sentence_head/output_dense/kernel", "logits/kernel"}
# google-research/bert's modeling.py knows gelu (its tanh form), relu, tanh.
_ACTIVATION_NAMES = {"gelu": "gelu", "gelu_approximate": "gelu", "relu": "relu"}


def tensors_from(backbone, num_layers, pretrainer=None, classifier=None):
    """{google name: float32 numpy array} of our encoder and heads.

    Our fused query/key/value kernel `[hidden, 3 * hidden]` (and bias) is
    split back into Google's three along the output axis; the NSP and
    classifier kernels are transposed to Google's `[labels, hidden]`.
    """
    weights = {w.path: w for w in backbone.weights}
    values = {}
    for ours, names in backbone_variable_map(num_layers):
        value = np.asarray(weights[ours].numpy(), np.float32)
        if isinstance(names, tuple):
            values.update(zip(names, np.split(value, len(names), axis=-1)))
        else:
            values[names] = value
    heads = []
    if pretrainer is not None:
        heads.append((pretrainer, HEAD_VARIABLE_MAP))
    if classifier is not None:
        heads.append((classifier, CLASSIFIER_VARIABLE_MAP))
    for model, mapping in heads:
        by_path = {_strip_model_prefix(w.path): w for w in model.weights}
        for ours, name in mapping:
            value = np.asarray(by_path[ours].numpy(), np.float32)
            values[name] = value.T if ours in _TRANSPOSED else value
    return values


def export(
    out_dir: str,
    *,
    model_cfg: ModelConfig,
    backbone,
    vocab: list[str],
    pretrainer=None,
    classifier=None,
) -> list[str]:
    """Writes a google-research/bert checkpoint directory: `bert_model.ckpt`
    (`.index` + `.data-00000-of-00001`, TF's V2 bundle format, the names
    of `backbone_variable_map` and the heads), `bert_config.json` and
    `vocab.txt` — what its `run_pretraining.py`/`run_classifier.py` take as
    `--init_checkpoint`, `--bert_config_file` and `--vocab_file`.

    google-research/bert's `gelu` is the tanh form; an encoder of ours with
    the exact erf GELU is written as `gelu` too (about 1e-3 apart in the
    activation; our own import reads it back exactly). Returns file names.
    """
    import tensorflow as tf

    values = tensors_from(backbone, model_cfg.num_layers, pretrainer, classifier)
    fileio.makedirs(out_dir)
    names = sorted(values)
    # SaveV2 writes exactly these names (what TF1's Saver writes and
    # `tf.train.load_checkpoint`/`init_from_checkpoint` read); TF2's
    # object-based `tf.train.Checkpoint` would write object-graph keys.
    tf.raw_ops.SaveV2(
        prefix=fileio.join(out_dir, CHECKPOINT_PREFIX),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(values[n]) for n in names],
    )
    config = {
        "attention_probs_dropout_prob": model_cfg.dropout,
        "hidden_act": _ACTIVATION_NAMES[model_cfg.activation],
        "hidden_dropout_prob": model_cfg.dropout,
        "hidden_size": model_cfg.hidden_dim,
        "initializer_range": model_cfg.initializer_range,
        "intermediate_size": model_cfg.intermediate_dim,
        "max_position_embeddings": model_cfg.max_sequence_length,
        "num_attention_heads": model_cfg.num_heads,
        "num_hidden_layers": model_cfg.num_layers,
        "type_vocab_size": model_cfg.num_segments,
        "vocab_size": model_cfg.vocabulary_size,
    }
    fileio.write_atomic(fileio.join(out_dir, "vocab.txt"), "\n".join(vocab) + "\n")
    fileio.write_atomic(
        fileio.join(out_dir, CONFIG_FILE), json.dumps(config, indent=2) + "\n"
    )
    return [
        f"{CHECKPOINT_PREFIX}.index",
        f"{CHECKPOINT_PREFIX}.data-00000-of-00001",
        CONFIG_FILE,
        "vocab.txt",
    ]
