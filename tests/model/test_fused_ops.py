import keras
import numpy as np
import pytest

from model import fused_ops
from model.transformer_encoder import TransformerEncoder


def test_keep_mask_rate_is_exact_to_16_bits():
    seeds = keras.random.SeedGenerator(3)
    keep = np.asarray(fused_ops.dropout_keep_mask((64, 4, 128, 128), 0.1, seeds))
    assert keep.shape == (64, 4, 128, 128)
    # 4.2M draws: the binomial sd of the fraction is 1.5e-4.
    assert abs((1.0 - keep.mean()) - 6554 / 65536) < 1e-3
    # Fresh masks per call, odd sizes handled.
    again = np.asarray(fused_ops.dropout_keep_mask((64, 4, 128, 128), 0.1, seeds))
    assert (keep != again).mean() > 0.1
    odd = np.asarray(fused_ops.dropout_keep_mask((3, 5, 7), 0.5, seeds))
    assert odd.shape == (3, 5, 7) and 0 < odd.mean() < 1


def test_degenerate_rates():
    seeds = keras.random.SeedGenerator(0)
    x = np.ones((4, 6), "float32")
    assert not np.asarray(fused_ops.dropout_keep_mask((4, 6), 1.0, seeds)).any()
    keep = fused_ops.dropout_keep_mask((4, 6), 0.0, seeds)
    np.testing.assert_array_equal(fused_ops.apply_dropout(x, keep, 0.0), x)
    np.testing.assert_array_equal(fused_ops.apply_dropout(x, keep, 1.0), 0 * x)
    keep = fused_ops.dropout_keep_mask((4, 6), 0.5, seeds)
    y = np.asarray(fused_ops.apply_dropout(x, keep, 0.5))
    assert set(np.unique(y)) <= {0.0, 2.0}


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_xla_fused_encoder_matches_plain_ops(dtype):
    # training=True (XLA kernels) with dropout 0 must equal training=False
    # (plain ops): forward and gradients.
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    layer = TransformerEncoder(num_heads=2, intermediate_dim=32, dtype=dtype)
    x = tf.constant(np.random.RandomState(0).randn(2, 6, 16), tf.float32)
    mask = tf.constant([[1, 1, 1, 1, 0, 0], [1] * 6], tf.int32)
    layer(x, padding_mask=mask)

    def run(training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, padding_mask=mask, training=training), tf.float32)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [x] + [v.value for v in layer.trainable_weights])
        return [y] + grads

    for fused, plain in zip(run(True), run(False)):
        fused, plain = np.asarray(fused), np.asarray(plain)
        if dtype == "float32":
            np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-4)
        else:
            # XLA keeps some intermediates in float32 that TF rounds to
            # bf16: compare whole tensors (bf16 has 8 mantissa bits).
            error = np.linalg.norm(fused - plain) / np.linalg.norm(plain)
            assert error < 0.03


def test_encoder_dropout_rate_one_zeroes_residual_branches():
    # dropout=1: both branches vanish, so the block is LN(LN(x)).
    layer = TransformerEncoder(num_heads=2, intermediate_dim=16, dropout=1.0)
    x = np.random.RandomState(2).randn(2, 5, 8).astype("float32")
    y = np.asarray(layer(x, training=True))

    def ln(a):
        return (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True))

    np.testing.assert_allclose(y, ln(ln(x)), atol=1e-4)
