"""Fused elementwise pieces of the training step (keras.ops, any backend).

On TensorFlow's CPU path every elementwise op (bias add, GELU, dropout,
residual add, LayerNorm, softmax, the MLM cross-entropy) is its own kernel
that reads and writes whole activations, and their gradients are as many
again: profiled on BERT-mini bf16 they took ~70% of a step, the oneDNN
matmuls ~25%. `xla` compiles a small function of such ops into one XLA
kernel (forward and gradient), while the matmuls between them stay on
oneDNN (bf16 on AMX; XLA's CPU dots are slower in bf16). Under JAX (which
jits the whole step) and for `training=False` calls (exported SavedModels
must not need XLA) the functions run as plain ops.

Dropout keep-masks come from one stateless Philox draw of 32-bit integers
of which each serves two elements (16 bits each): half the random numbers
of `keras.random.dropout`, which draws a float per element. The keep
probability is `1 - round(rate * 65536) / 65536` (rate 0.1 is 0.1000061);
Keras' own bf16 dropout compares bf16 uniforms, 0.1 becomes ~0.1016.
"""

import functools

import keras
from keras import ops


def xla(fn):
    """`fn` compiled as one XLA function on TensorFlow, `fn` elsewhere.

    Args:
        fn: a function of tensors built from `keras.ops`, with static
            Python arguments bound (use `functools.partial`).

    Returns a callable with the same signature. Its gradient is compiled
    too (TensorFlow differentiates the XLA function as a whole).
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.function(fn, jit_compile=True, reduce_retracing=False)


def dropout_keep_mask(shape, rate, seed_generator):
    """Bool keep-mask of `shape` (True = keep) for dropout at `rate`.

    Args:
        shape: tuple of ints or a 1-D int tensor.
        rate: float in (0, 1), the drop probability (quantized to 1/65536
            on TensorFlow, see the module docstring).
        seed_generator: `keras.random.SeedGenerator`; advanced per call.

    Returns a bool tensor of `shape`.
    """
    if rate >= 1.0:
        return ops.zeros(shape, "bool")
    if keras.backend.backend() != "tensorflow":
        return keras.random.uniform(shape, seed=seed_generator) >= rate
    import tensorflow as tf

    seed = seed_generator.next()
    # As keras' TF backend: stateless ops want int32 seeds.
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    shape = tf.convert_to_tensor(shape, tf.int32)
    size = tf.reduce_prod(shape)
    bits = tf.random.stateless_uniform(
        [(size + 1) // 2], seed=seed, minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(bits, tf.uint16), [-1])[:size]
    threshold = tf.constant(round(rate * 65536), tf.uint16)
    return tf.reshape(halves >= threshold, shape)


def apply_dropout(x, keep, rate):
    """`x` with dropped elements zeroed and kept ones scaled by 1/(1-rate)."""
    if keep is None:
        return x
    if rate >= 1.0:
        return ops.zeros_like(x)
    scale = ops.cast(1.0 / (1.0 - rate), x.dtype)
    return ops.where(keep, x * scale, ops.zeros_like(x))


def layer_norm(x, gamma, beta, epsilon, dtype):
    """LayerNorm over the last axis in float32, returned as `dtype`."""
    x = ops.cast(x, "float32")
    mean = ops.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = ops.mean(ops.square(centered), axis=-1, keepdims=True)
    y = centered * ops.rsqrt(variance + epsilon)
    y = y * ops.cast(gamma, "float32") + ops.cast(beta, "float32")
    return ops.cast(y, dtype)


def _bias_dropout_residual_layer_norm(
    y, bias, residual, keep, gamma, beta, *, rate, epsilon, dtype
):
    y = y + ops.cast(bias, y.dtype)
    y = apply_dropout(y, keep, rate)
    return layer_norm(residual + y, gamma, beta, epsilon, dtype)


def bias_dropout_residual_layer_norm(
    y, bias, residual, keep, gamma, beta, *, rate, epsilon, dtype, fused
):
    """`LayerNorm(residual + Dropout(y + bias))` (post-LN block output).

    Args:
        y: `[..., hidden]` matmul output without its bias.
        bias: `[hidden]`. residual: like `y`. keep: bool like `y` or None.
        gamma, beta: LayerNorm scale and offset `[hidden]`.
        rate, epsilon: floats. dtype: output dtype.
        fused: bool, compile with `xla` (training steps).
    """
    return run(
        _bias_dropout_residual_layer_norm,
        y,
        bias,
        residual,
        keep,
        gamma,
        beta,
        fused=fused,
        rate=rate,
        epsilon=epsilon,
        dtype=dtype,
    )


def _bias_activation(y, bias, *, activation):
    return activation(y + ops.cast(bias, y.dtype))


def bias_activation(y, bias, *, activation, fused):
    """`activation(y + bias)`; XLA computes GELU's erf in float32 anyway."""
    return run(_bias_activation, y, bias, fused=fused, activation=activation)


def _masked_softmax_dropout(scores, padding_mask, keep, *, rate, dtype):
    scores = ops.cast(scores, "float32")
    if padding_mask is not None:
        allowed = ops.cast(padding_mask, "float32")[:, None, None, :]
        scores = scores + (1.0 - allowed) * -1e9
    probs = ops.cast(ops.softmax(scores, axis=-1), dtype)
    return apply_dropout(probs, keep, rate)


def masked_softmax_dropout(scores, padding_mask, keep, *, rate, dtype, fused):
    """Attention probabilities: float32 softmax over keys, then dropout.

    Args:
        scores: `[b, heads, t, s]` attention logits.
        padding_mask: `[b, s]` 1 real / 0 padding, or None.
        keep: bool `[b, heads, t, s]` or None. rate: float.
        dtype: dtype of the returned probabilities.
        fused: bool, compile with `xla`.
    """
    return run(
        _masked_softmax_dropout,
        scores,
        padding_mask,
        keep,
        fused=fused,
        rate=rate,
        dtype=dtype,
    )


_COMPILED = {}


def _in_xla_function():
    """True while tracing inside an XLA-compiled function (a jit-compiled
    train step or TPU): XLA fuses everything there anyway, and a nested
    XLA function made such a step ~13x slower on CPU."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    if tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    return control_flow_util.GraphOrParentsInXlaContext(graph)


def run(fn, *tensors, fused, **static):
    """`fn(*tensors, **static)`, compiled by `xla` when `fused`.

    One compiled function is kept per (`fn`, `static`), so each traces
    once per input shape, as a layer's own ops would.

    Args:
        fn: function of tensors (keras.ops) and static keyword arguments.
        *tensors: its tensor arguments (None allowed).
        fused: bool. False runs `fn` as plain ops.
        **static: hashable Python values (floats, dtype names, callables).
    """
    # Kernels are chosen by the configured backend: only TensorFlow's
    # per-op execution gains from compiling these pieces (JAX jits the whole
    # step, and must not touch TensorFlow even where it is installed).
    if not fused or keras.backend.backend() != "tensorflow" or _in_xla_function():
        return fn(*tensors, **static)
    key = (fn, tuple(sorted(static.items())))
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = xla(functools.partial(fn, **static))
    # Variables enter as tensors read here (autocast where the layer
    # autocasts): a (Mirrored) variable passed into the XLA function got no
    # gradient, or failed to trace, under MirroredStrategy.
    return compiled(*(None if t is None else _to_tensor(t) for t in tensors))


def _to_tensor(value):
    import tensorflow as tf

    if isinstance(value, keras.Variable):
        value = value.value
    return tf.convert_to_tensor(value)
