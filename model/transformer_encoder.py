"""BERT's post-LayerNorm transformer block with fused QKV self-attention."""

import keras
from keras import ops


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
            activation=self.activation,
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

    def _self_attention(self, x, padding_mask, training):
        hidden_dim = self.num_heads * self.head_dim
        qkv = self._qkv_dense(x)  # [b, t, 3 * hidden]
        qkv = ops.reshape(qkv, ops.shape(qkv)[:-1] + (3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # [3, b, n, t, h]
        # unstack, not qkv[0], qkv[1], qkv[2]: the gradient of a strided
        # slice (StridedSliceGrad) cost 16% of a bf16 CPU step; unstack's
        # is one cheap stack.
        query, key, value = ops.unstack(qkv, 3, axis=0)
        query = query * ops.cast(self.head_dim**-0.5, query.dtype)
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))
        # Softmax in float32: bf16/fp16 logits lose the small differences.
        scores = ops.cast(scores, "float32")  # [b, n, t, s]
        if padding_mask is not None:
            keep = ops.cast(padding_mask, "float32")[:, None, None, :]
            scores = scores + (1.0 - keep) * -1e9
        probs = ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)
        probs = self._attention_dropout(probs, training=training)
        context = ops.matmul(probs, value)  # [b, n, t, h]
        context = ops.transpose(context, (0, 2, 1, 3))
        context = ops.reshape(context, ops.shape(context)[:-2] + (hidden_dim,))
        return self._attention_output_dense(context)

    def call(self, inputs, padding_mask=None, training=None):
        x = inputs
        attention = self._self_attention(x, padding_mask, training)
        attention = self._self_attention_dropout(attention, training=training)
        x = self._self_attention_layer_norm(x + attention)
        hidden = self._feedforward_intermediate_dense(x)
        hidden = self._feedforward_output_dense(hidden)
        hidden = self._feedforward_dropout(hidden, training=training)
        return self._feedforward_layer_norm(x + hidden)

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
