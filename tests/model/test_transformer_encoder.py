import json

import keras
import numpy as np

from model.transformer_encoder import TransformerEncoder


def test_output_shape_and_padding_is_ignored():
    layer = TransformerEncoder(num_heads=2, intermediate_dim=16)
    x = np.random.RandomState(0).randn(2, 6, 8).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], "int32")
    y = layer(x, padding_mask=mask)
    assert tuple(y.shape) == (2, 6, 8)
    # Changing padded positions must not change the real positions' output.
    x2 = x.copy()
    x2[0, 4:] = 100.0
    y2 = layer(x2, padding_mask=mask)
    np.testing.assert_allclose(
        np.asarray(y)[0, :4], np.asarray(y2)[0, :4], rtol=1e-5, atol=1e-5
    )


def test_matches_reference_attention():
    layer = TransformerEncoder(num_heads=2, intermediate_dim=16)
    x = np.random.RandomState(1).randn(1, 5, 8).astype("float32")
    y = np.asarray(layer(x))
    w = {v.path.split("/", 1)[1]: np.asarray(v) for v in layer.weights}
    qkv = x @ w["self_attention_qkv/kernel"] + w["self_attention_qkv/bias"]
    q, k, v = np.split(qkv.reshape(1, 5, 3, 2, 4), 3, axis=2)
    q, k, v = (a[:, :, 0].transpose(0, 2, 1, 3) for a in (q, k, v))
    s = q @ k.transpose(0, 1, 3, 2) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = (p @ v).transpose(0, 2, 1, 3).reshape(1, 5, 8)
    att = ctx @ w["self_attention_output/kernel"] + w["self_attention_output/bias"]

    def ln(a, name):
        mu, var = a.mean(-1, keepdims=True), a.var(-1, keepdims=True)
        return (a - mu) / np.sqrt(var + 1e-12) * w[f"{name}/gamma"] + w[f"{name}/beta"]

    h = ln(x + att, "self_attention_layer_norm")
    inner = np.asarray(
        keras.activations.gelu(
            h @ w["feedforward_intermediate_dense/kernel"]
            + w["feedforward_intermediate_dense/bias"],
            approximate=False,
        )
    )
    out = (
        inner @ w["feedforward_output_dense/kernel"]
        + w["feedforward_output_dense/bias"]
    )
    np.testing.assert_allclose(y, ln(h + out, "feedforward_layer_norm"), atol=1e-4)


def test_config_round_trip():
    layer = TransformerEncoder(num_heads=2, intermediate_dim=16, dropout=0.1)
    clone = TransformerEncoder.from_config(layer.get_config())
    assert json.dumps(clone.get_config(), sort_keys=True) == json.dumps(
        layer.get_config(), sort_keys=True
    )
