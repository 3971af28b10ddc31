"""The BERT encoder as a functional Keras model (keras-hub style)."""

import os

import keras
from keras import ops

from configs import features
from model.position_embedding import PositionEmbedding
from model.transformer_encoder import TransformerEncoder

ENCODER_WEIGHTS_FILE = "encoder.weights.h5"


@keras.saving.register_keras_serializable(package="bert")
def gelu_approximate(x):
    """GELU's tanh form, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`:
    Hugging Face's `gelu_new` / `gelu_pytorch_tanh` (and keras-hub's)."""
    return keras.activations.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="bert")
def gelu_exact(x):
    """GELU's exact form, `x Phi(x)` with the erf (BERT's, HF's `gelu`)."""
    return keras.activations.gelu(x, approximate=False)


_ACTIVATION_FNS = {
    "gelu": gelu_exact,
    "gelu_approximate": gelu_approximate,
    "relu": keras.activations.relu,
}


def get_activation(name):
    """`ModelConfig.activation` name -> the function (see `ACTIVATIONS`)."""
    if name not in _ACTIVATION_FNS:
        raise ValueError(
            f"activation {name!r}: expected one of {'|'.join(_ACTIVATION_FNS)}"
        )
    return _ACTIVATION_FNS[name]


def bert_kernel_initializer(stddev=0.02):
    """BERT's init: truncated normal with `stddev` (initializer_range)."""
    return keras.initializers.TruncatedNormal(stddev=stddev)


@keras.saving.register_keras_serializable(package="bert")
class BertBackbone(keras.Model):
    """A BERT encoder: embeddings, post-LN transformer blocks and a pooler.

    Inputs are a dict of int32 tensors `[batch, seq]` (any
    `seq <= max_sequence_length`) keyed by `configs.features` names:
    `"input_ids"` (token ids), `"input_mask"` (1 real / 0 padding) and
    `"segment_ids"` (0 for `[CLS] A [SEP]`, 1 for `B [SEP]`). Outputs are a
    dict: `"sequence_output"` `[batch, seq, hidden_dim]` (last block) and
    `"pooled_output"` `[batch, hidden_dim]` (dense + tanh on `[CLS]`).

    The layer `token_embedding` holds the `[vocabulary_size, hidden_dim]`
    table that the masked-LM head ties its output weights to. Build one from
    a config section with `BertBackbone.from_model_config(cfg.model)`; load
    pretrained weights (ours or Google's TF1 checkpoints) with
    `model.bert_backbone.load_pretrained_backbone(path)`.

    Args:
        vocabulary_size: int. Rows of the token embedding.
        num_layers: int. Transformer blocks.
        num_heads: int. Attention heads per block.
        hidden_dim: int. Width of embeddings and blocks.
        intermediate_dim: int. Feed-forward inner width.
        dropout: float. Dropout everywhere (embeddings, attention, blocks).
        max_sequence_length: int. Rows of the position embedding.
        num_segments: int. Rows of the segment (token type) embedding.
        initializer_range: float. Stddev of the truncated-normal init.
        activation: str. Feed-forward activation: "gelu" (exact erf, BERT's),
            "gelu_approximate" (tanh form) or "relu" (`ACTIVATIONS`).
        layer_norm_epsilon: float. Epsilon of every LayerNorm.
        dtype: None, str or `keras.DTypePolicy`, e.g. `"mixed_bfloat16"`.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    ```python
    backbone = BertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=64,
    )
    ids = np.ones((2, 12), "int32")
    out = backbone({"input_ids": ids, "input_mask": ids,
                    "segment_ids": 0 * ids})
    out["sequence_output"].shape  # (2, 12, 16)
    out["pooled_output"].shape    # (2, 16)
    ```

    References:
     - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
     - keras-hub `keras_hub/src/models/bert/bert_backbone.py`
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        initializer_range=0.02,
        activation="gelu",
        layer_norm_epsilon=1e-12,
        dtype=None,
        **kwargs,
    ):
        activation_fn = get_activation(activation)
        # === Layers ===
        init = lambda: bert_kernel_initializer(initializer_range)  # noqa: E731
        self.token_embedding = keras.layers.Embedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            embeddings_initializer=init(),
            dtype=dtype,
            name="token_embedding",
        )
        self.position_embedding = PositionEmbedding(
            sequence_length=max_sequence_length,
            initializer=init(),
            dtype=dtype,
            name="position_embedding",
        )
        self.segment_embedding = keras.layers.Embedding(
            input_dim=num_segments,
            output_dim=hidden_dim,
            embeddings_initializer=init(),
            dtype=dtype,
            name="segment_embedding",
        )
        self.embeddings_add = keras.layers.Add(dtype=dtype, name="embeddings_add")
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="embeddings_layer_norm"
        )
        self.embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="embeddings_dropout"
        )
        self.transformer_layers = [
            TransformerEncoder(
                num_heads=num_heads,
                intermediate_dim=intermediate_dim,
                dropout=dropout,
                activation=activation_fn,
                layer_norm_epsilon=layer_norm_epsilon,
                kernel_initializer=init(),
                dtype=dtype,
                name=f"transformer_layer_{i}",
            )
            for i in range(num_layers)
        ]
        self.pooled_dense = keras.layers.Dense(
            hidden_dim,
            activation="tanh",
            kernel_initializer=init(),
            dtype=dtype,
            name="pooled_dense",
        )

        # === Functional Model ===
        token_id_input = keras.Input(
            shape=(None,), dtype="int32", name=features.INPUT_IDS
        )
        padding_mask_input = keras.Input(
            shape=(None,), dtype="int32", name=features.INPUT_MASK
        )
        segment_id_input = keras.Input(
            shape=(None,), dtype="int32", name=features.SEGMENT_IDS
        )
        tokens = self.token_embedding(token_id_input)
        positions = self.position_embedding(tokens)
        segments = self.segment_embedding(segment_id_input)
        x = self.embeddings_add((tokens, positions, segments))
        x = self.embeddings_layer_norm(x)
        x = self.embeddings_dropout(x)
        for transformer_layer in self.transformer_layers:
            x = transformer_layer(x, padding_mask=padding_mask_input)
        sequence_output = x
        pooled_output = self.pooled_dense(x[:, 0, :])
        super().__init__(
            inputs={
                features.INPUT_IDS: token_id_input,
                features.INPUT_MASK: padding_mask_input,
                features.SEGMENT_IDS: segment_id_input,
            },
            outputs={
                "sequence_output": sequence_output,
                "pooled_output": pooled_output,
            },
            dtype=dtype,
            **kwargs,
        )
        # A functional Model does not adopt `dtype` as its own policy; task
        # heads read `backbone.dtype_policy` to match the encoder, so set it
        # (as keras-hub's `Backbone` does). Without this the heads of a
        # mixed_bfloat16 backbone silently ran in float32.
        if dtype is not None:
            self.dtype_policy = keras.dtype_policies.get(dtype)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.initializer_range = initializer_range
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon

    def get_config(self):
        return {
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments,
            "initializer_range": self.initializer_range,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    @classmethod
    def from_model_config(cls, model_cfg, dtype=None, **kwargs):
        """Builds a backbone from a `configs.schema.ModelConfig` section."""
        return cls(
            vocabulary_size=model_cfg.vocabulary_size,
            num_layers=model_cfg.num_layers,
            num_heads=model_cfg.num_heads,
            hidden_dim=model_cfg.hidden_dim,
            intermediate_dim=model_cfg.intermediate_dim,
            dropout=model_cfg.dropout,
            max_sequence_length=model_cfg.max_sequence_length,
            num_segments=model_cfg.num_segments,
            initializer_range=model_cfg.initializer_range,
            activation=model_cfg.activation,
            layer_norm_epsilon=model_cfg.layer_norm_epsilon,
            dtype=dtype,
            **kwargs,
        )


def load_pretrained_backbone(
    path, model_cfg=None, dtype=None, dropout=None, checkpoint=None
):
    """Returns a `BertBackbone` with pretrained weights from `path`.

    Args:
        path: any format `model.checkpoints.inspect` reads: our pretraining
            or fine-tuning `model_dir` (`config.yaml` + `encoder.weights.h5`
            or `best.weights.h5`), a Hugging Face BERT directory
            (`config.json` + `model.safetensors`, sharded or not), or a
            Google TF1 BERT checkpoint prefix such as `.../bert_model.ckpt`.
        model_cfg: `ModelConfig` for the architecture. Optional: read from
            `config.yaml` / `config.json` / the TF1 shapes.
        dtype: dtype policy of the new backbone.
        dropout: override the config's dropout (e.g. for fine-tuning).
        checkpoint: a `model.checkpoints.Checkpoint` already inspected.

    Raises:
        ConfigError: `path` is no checkpoint, or shapes disagree (one line).
    """
    import dataclasses

    from model import checkpoints

    ckpt = checkpoint or checkpoints.inspect(path)
    if model_cfg is None:
        model_cfg = ckpt.model_config
    if model_cfg is None:
        from configs.loader import load_resolved

        model_cfg = load_resolved(ckpt.path).model
    if dropout is not None:
        model_cfg = dataclasses.replace(model_cfg, dropout=dropout)
    backbone = BertBackbone.from_model_config(model_cfg, dtype=dtype)
    for note in checkpoints.load_backbone(ckpt, backbone):
        print(f"note: {note}", flush=True)
    return backbone
