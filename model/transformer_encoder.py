"""BERT's post-LayerNorm transformer block with fused QKV self-attention."""

import keras
from keras import ops

from model import fused_ops


@keras.saving.register_keras_serializable(package="bert")
class TransformerEncoder(keras.layers.Layer):
    """One post-LN transformer block: self-attention, then a GELU MLP.

    `x -> LN(x + Dropout(Attention(x))) -> LN(h + Dropout(MLP(h)))`, as in
    BERT. Query, key and value come from one fused `Dense(3 * hidden_dim)`
    (a single big matmul is faster on CPU than three small ones); the
    softmax runs in float32 under mixed precision.

    Call arguments:
        inputs: float tensor `[batch, seq, hidden_dim]`.
        padding_mask: optional int/bool tensor `[batch, seq]`, 1 (True) for
            real tokens and 0 for padding; padded keys get no attention.
        training: bool, enables dropout.

    Returns a tensor shaped like `inputs`.

    Args:
        num_heads: int. Attention heads; must divide the hidden size.
        intermediate_dim: int. Inner width of the feed-forward network.
        dropout: float. Dropout on attention probabilities and on both
            residual branches.
        activation: str or callable. Feed-forward activation (exact GELU).
        layer_norm_epsilon: float. Epsilon of both LayerNorms (BERT: 1e-12).
        kernel_initializer: str or initializer. Init of every kernel.
        bias_initializer: str or initializer. Init of every bias.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Example:
    ```python
    encoder = TransformerEncoder(num_heads=2, intermediate_dim=32)
    x = keras.random.uniform((2, 10, 16))
    mask = keras.ops.ones((2, 10), "int32")
    y = encoder(x, padding_mask=mask)  # (2, 10, 16)
    ```

    References:
     - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762)
     - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-12,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        if hidden_dim % self.num_heads != 0:
            raise ValueError(
                f"hidden size {hidden_dim} is not divisible by "
                f"num_heads {self.num_heads}"
            )
        self.head_dim = hidden_dim // self.num_heads
        dense_args = dict(
            kernel_initializer=self._clone(self.kernel_initializer),
            bias_initializer=self._clone(self.bias_initializer),
            dtype=self.dtype_policy,
        )
        # === Self-attention ===
        self._qkv_dense = keras.layers.Dense(
            3 * hidden_dim, name="self_attention_qkv", **dense_args
        )
        self._qkv_dense.build(inputs_shape)
        self._attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )
        self._attention_output_dense = keras.layers.Dense(
            hidden_dim, name="self_attention_output", **dense_args
        )
        self._attention_output_dense.build(inputs_shape)
        self._self_attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="self_attention_dropout"
        )
        self._self_attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="self_attention_layer_norm",
        )
        self._self_attention_layer_norm.build(inputs_shape)
        # === Feed-forward ===
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            name="feedforward_intermediate_dense",
            **dense_args,
        )
        self._feedforward_intermediate_dense.build(inputs_shape)
        self._feedforward_output_dense = keras.layers.Dense(
            hidden_dim, name="feedforward_output_dense", **dense_args
        )
        intermediate_shape = list(inputs_shape)
        intermediate_shape[-1] = self.intermediate_dim
        self._feedforward_output_dense.build(tuple(intermediate_shape))
        self._feedforward_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="feedforward_dropout"
        )
        self._feedforward_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="feedforward_layer_norm",
        )
        self._feedforward_layer_norm.build(inputs_shape)
        self.built = True

    def _clone(self, initializer):
        return initializer.__class__.from_config(initializer.get_config())

    def _matmul(self, x, dense):
        # The Dense layers hold the weights (names and checkpoints as
        # before); their matmul runs here on 2-D `[b * t, in]` inputs (one
        # oneDNN MatMul, no Tensordot reshapes) and their bias joins the
        # fused elementwise ops that follow.
        return ops.matmul(x, ops.cast(dense.kernel, self.compute_dtype))

    def _keep_mask(self, shape, dropout_layer, training):
        if not training or self.dropout <= 0:
            return None
        return fused_ops.dropout_keep_mask(
            shape, self.dropout, dropout_layer.seed_generator
        )

    def call(self, inputs, padding_mask=None, training=None):
        # `fused`: XLA kernels for the elementwise chains between matmuls
        # in training steps (see model/fused_ops.py); plain ops otherwise.
        fused = bool(training)
        dtype = self.compute_dtype
        shape = ops.shape(inputs)
        batch, length = shape[0], shape[1]
        hidden_dim = self.num_heads * self.head_dim
        x = ops.reshape(inputs, (-1, hidden_dim))  # [b * t, hidden]

        # === Self-attention ===
        qkv = self._matmul(x, self._qkv_dense)
        qkv = ops.reshape(qkv, (batch, length, 3 * hidden_dim))
        # Head split/merge stay plain TF ops: these transposes ran 2.8x
        # slower as XLA CPU code than on oneDNN.
        query, key_t, value = _split_heads(
            qkv, self._qkv_dense.bias, num_heads=self.num_heads
        )
        scores = ops.matmul(query, key_t)  # [b, n, t, s]
        keep = self._keep_mask(ops.shape(scores), self._attention_dropout, training)
        probs = fused_ops.masked_softmax_dropout(
            scores, padding_mask, keep, rate=self.dropout, dtype=dtype, fused=fused
        )
        context = ops.matmul(probs, value)  # [b, n, t, h]
        context = _merge_heads(context)
        attention = self._matmul(context, self._attention_output_dense)
        keep = self._keep_mask(
            ops.shape(attention), self._self_attention_dropout, training
        )
        x = fused_ops.bias_dropout_residual_layer_norm(
            attention,
            self._attention_output_dense.bias,
            x,
            keep,
            self._self_attention_layer_norm.gamma,
            self._self_attention_layer_norm.beta,
            rate=self.dropout,
            epsilon=self.layer_norm_epsilon,
            dtype=dtype,
            fused=fused,
        )

        # === Feed-forward ===
        hidden = self._matmul(x, self._feedforward_intermediate_dense)
        hidden = fused_ops.bias_activation(
            hidden,
            self._feedforward_intermediate_dense.bias,
            activation=self.activation,
            fused=fused,
        )
        hidden = self._matmul(hidden, self._feedforward_output_dense)
        keep = self._keep_mask(ops.shape(hidden), self._feedforward_dropout, training)
        x = fused_ops.bias_dropout_residual_layer_norm(
            hidden,
            self._feedforward_output_dense.bias,
            x,
            keep,
            self._feedforward_layer_norm.gamma,
            self._feedforward_layer_norm.beta,
            rate=self.dropout,
            epsilon=self.layer_norm_epsilon,
            dtype=dtype,
            fused=fused,
        )
        return ops.reshape(x, shape)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config


def _split_heads(qkv, bias, *, num_heads):
    """`[b, t, 3 * H]` + bias -> scaled query `[b, n, t, h]`, key
    transposed `[b, n, h, s]` (ready for `query @ key_t`), value
    `[b, n, s, h]`."""
    qkv = qkv + ops.cast(bias, qkv.dtype)
    shape = ops.shape(qkv)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    qkv = ops.reshape(qkv, (shape[0], shape[1], 3, num_heads, head_dim))
    query, key, value = ops.unstack(qkv, 3, axis=2)  # each [b, t, n, h]
    query = ops.transpose(query, (0, 2, 1, 3)) * ops.cast(head_dim**-0.5, qkv.dtype)
    return (
        query,
        ops.transpose(key, (0, 2, 3, 1)),
        ops.transpose(value, (0, 2, 1, 3)),
    )


def _merge_heads(context):
    """`[b, n, t, h]` -> `[b * t, n * h]`."""
    context = ops.transpose(context, (0, 2, 1, 3))
    return ops.reshape(context, (-1, context.shape[-2] * context.shape[-1]))
