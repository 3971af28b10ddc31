"""Learned absolute position embedding (BERT's `position_embeddings`)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bert")
class PositionEmbedding(keras.layers.Layer):
    """A learned table of `sequence_length` position vectors.

    Given `[batch, seq, hidden]` inputs, returns the first `seq` rows of the
    table broadcast to `[batch, seq, hidden]` (in the compute dtype), so
    any `seq <= sequence_length` works.

    Args:
        sequence_length: int. Rows of the table (the longest sequence).
        initializer: str or `keras.initializers.Initializer`. Table init.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `trainable`, `dtype` etc.

    Example:
    ```python
    x = keras.ops.zeros((2, 16, 8))
    positions = PositionEmbedding(sequence_length=64)(x)  # (2, 16, 8)
    ```

    References:
     - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if sequence_length is None:
            raise ValueError("`sequence_length` must be an int, got None")
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=[self.sequence_length, hidden_dim],
            initializer=self.initializer,
            trainable=True,
        )
        self.built = True

    def call(self, inputs):
        shape = ops.shape(inputs)
        seq_length = shape[-2]
        table = ops.convert_to_tensor(self.position_embeddings)
        table = ops.cast(table, self.compute_dtype)
        positions = ops.slice(table, (0, 0), (seq_length, shape[-1]))
        return ops.broadcast_to(positions, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
