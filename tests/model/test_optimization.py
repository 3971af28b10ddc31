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


def test_constant_rate_is_a_variable_a_stateless_loop_can_set():
    # total_steps=None: the rate lives in optimizer.variables, so a JAX
    # loop's stateless_apply reads whatever value the loop puts there.
    opt = create_optimizer(learning_rate=0.5, total_steps=None)
    dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    dense.build((None, 1))
    opt.build(dense.trainable_variables)
    names = [v.name for v in opt.variables]
    assert "learning_rate" in names
    assert float(opt.learning_rate) == pytest.approx(0.5)
    opt.learning_rate.assign(0.0)
    before = np.array(dense.kernel)
    opt.apply([np.ones((1, 1), "float32")], dense.trainable_variables)
    np.testing.assert_allclose(np.array(dense.kernel), before)  # rate 0: no step
