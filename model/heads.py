"""Pretraining heads: masked-LM (tied to the token embedding) and NSP/SOP."""

import keras
from keras import ops

from model import fused_ops


@keras.saving.register_keras_serializable(package="bert")
class MaskedLMHead(keras.layers.Layer):
    """Predicts the original tokens at the masked positions only.

    Gathers `sequence_output` at `masked_positions`, then dense + GELU +
    LayerNorm, then logits against the (tied) token embedding table plus a
    per-token bias. Only `max_predictions_per_seq` rows per sequence reach
    the `[hidden, vocab]` matmul, as in BERT. Logits are float32 under mixed
    precision.

    Call arguments:
        inputs: float `[batch, seq, hidden_dim]`, the backbone's sequence
            output.
        masked_positions: int `[batch, num_predictions]`, token indices.

    Returns float32 logits `[batch, num_predictions, vocabulary_size]`.

    Args:
        vocabulary_size: int. Number of output classes (tokens).
        token_embedding: `keras.layers.Embedding` whose `embeddings`
            (`[vocabulary_size, hidden_dim]`) are reused as output weights.
            Not serialized: task models pass it again when rebuilt.
        activation: str or callable. Transform activation (GELU).
        layer_norm_epsilon: float. Transform LayerNorm epsilon.
        kernel_initializer: str or initializer. Transform kernel init.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Example:
    ```python
    embedding = keras.layers.Embedding(100, 16)
    embedding.build((None,))
    head = MaskedLMHead(vocabulary_size=100, token_embedding=embedding)
    logits = head(keras.random.uniform((2, 12, 16)),
                  masked_positions=np.array([[1, 3], [2, 0]]))  # (2, 2, 100)
    ```

    References:
     - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
    """

    def __init__(
        self,
        vocabulary_size,
        token_embedding=None,
        activation="gelu",
        layer_norm_epsilon=1e-12,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.token_embedding = token_embedding
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape, masked_positions_shape=None):
        if self.token_embedding is None:
            raise ValueError("MaskedLMHead needs a `token_embedding` layer")
        hidden_dim = inputs_shape[-1]
        self._intermediate_dense = keras.layers.Dense(
            hidden_dim,
            activation=self.activation,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="transform_dense",
        )
        self._intermediate_dense.build((None, None, hidden_dim))
        self._intermediate_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="transform_layer_norm",
        )
        self._intermediate_layer_norm.build((None, None, hidden_dim))
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(self.vocabulary_size,),
            initializer="zeros",
            trainable=True,
        )
        self.built = True

    def call(self, inputs, masked_positions):
        positions = ops.cast(masked_positions, "int32")[:, :, None]
        x = ops.take_along_axis(inputs, positions, axis=1)  # [b, p, hidden]
        x = self._intermediate_dense(x)
        x = self._intermediate_layer_norm(x)
        table = ops.cast(self.token_embedding.embeddings, self.compute_dtype)
        logits = ops.matmul(x, ops.transpose(table))  # [b, p, vocab]
        # float32 logits: the softmax over a 30k vocabulary needs the range.
        # Cast and bias in one XLA kernel (and its gradient, the bias sum):
        # three passes over `[b, p, vocab]` become one.
        return fused_ops.run(_float32_add_bias, logits, self.output_bias, fused=True)

    def compute_output_shape(self, inputs_shape, masked_positions_shape):
        return tuple(masked_positions_shape) + (self.vocabulary_size,)

    def compute_output_spec(self, inputs, masked_positions):
        return keras.KerasTensor(
            tuple(masked_positions.shape) + (self.vocabulary_size,),
            dtype="float32",
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="bert")
class SentencePredictionHead(keras.layers.Layer):
    """Classifies a sentence pair from the pooled `[CLS]` vector.

    One head serves BERT's next-sentence prediction (NSP) and ALBERT's
    sentence-order prediction (SOP): only the labels differ (0 = B follows
    A / in order, 1 = random B / swapped), so the choice is a data switch.

    Call arguments:
        inputs: float `[batch, hidden_dim]`, the backbone's pooled output.

    Returns float32 logits `[batch, num_classes]`.

    Args:
        num_classes: int. Output classes (2 for NSP and SOP).
        kernel_initializer: str or initializer. Kernel init.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Example:
    ```python
    head = SentencePredictionHead()
    logits = head(keras.random.uniform((4, 16)))  # (4, 2)
    ```

    References:
     - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805) (NSP)
     - [Lan et al., 2020](https://arxiv.org/abs/1909.11942) (SOP)
    """

    def __init__(self, num_classes=2, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape):
        self._dense = keras.layers.Dense(
            self.num_classes,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="output_dense",
        )
        self._dense.build(inputs_shape)
        self.built = True

    def call(self, inputs):
        return ops.cast(self._dense(inputs), "float32")

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(
            tuple(inputs.shape[:-1]) + (self.num_classes,), dtype="float32"
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config


def _float32_add_bias(logits, bias):
    return ops.cast(logits, "float32") + ops.cast(bias, "float32")
