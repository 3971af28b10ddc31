"""Keras 3 BERT: layers, backbone, pretraining/classification tasks, loops.

Importing this package imports nothing heavy: the layers and models are
backend-agnostic Keras 3 (`keras.layers` + `keras.ops` only), so they also
run under `KERAS_BACKEND=jax` on a machine without TensorFlow. So does
`model.pretrain` under JAX (with `model.data`'s numpy reader,
`model.training`'s logging and `model.jax_training`); TensorFlow is imported
by the TensorFlow step, the tf.data reader, `model.strategy`, fine-tuning
and export.
"""
