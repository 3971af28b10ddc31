import keras
import numpy as np
import pytest

from model.optimization import WarmupLinearDecay, create_optimizer


def test_warmup_then_linear_decay_to_zero():
    schedule = WarmupLinearDecay(peak=1.0, total_steps=10, warmup_steps=4)
    values = [float(schedule(step)) for step in (0, 2, 4, 7, 10, 12)]
    assert values == pytest.approx([0.0, 0.5, 0.6, 0.3, 0.0, 0.0])


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_no_weight_decay_on_layer_norm_and_bias(name):
    opt = create_optimizer(
        learning_rate=0.1, total_steps=10, warmup_steps=0, optimizer=name
    )
    dense = keras.layers.Dense(2, name="dense")
    dense.build((None, 2))
    norm = keras.layers.LayerNormalization()
    norm.build((None, 2))
    variables = dense.weights + norm.weights
    opt.build(variables)
    decayed = {v.name: opt._use_weight_decay(v) for v in variables}
    assert decayed == {"kernel": True, "bias": False, "gamma": False, "beta": False}
    assert isinstance(
        opt, keras.optimizers.AdamW if name == "adamw" else keras.optimizers.Lamb
    )
    assert opt.beta_2 == 0.999 and opt.epsilon == 1e-6
