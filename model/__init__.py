"""Keras 3 BERT: layers, backbone, pretraining/classification tasks, loops.

Importing this package imports nothing heavy: the layers and models are
backend-agnostic Keras 3 (`keras.layers` + `keras.ops` only), so they also
run under `KERAS_BACKEND=jax` on a machine without TensorFlow. Only the
training entry points (`model.pretrain`, `model.training`, `model.data`,
`model.strategy`, ...) import TensorFlow.
"""
