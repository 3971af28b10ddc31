"""Optimizers and the learning-rate schedule (TF-free, any Keras backend).

google-research/bert's recipe: AdamW (beta2 0.999, epsilon 1e-6, decoupled
weight decay 0.01 not applied to LayerNorm parameters or biases), a linear
warm-up to the peak rate, then linear decay to 0 at the last step; global
gradient-norm clipping at 1.0 (done by the training loop, after the
cross-replica sum). `lamb` is Keras' LAMB for large batches.
"""

import keras
from keras import ops

# Substrings of Keras variable names that get no weight decay: LayerNorm
# scale/offset (`gamma`/`beta`) and every bias (incl. the MLM `output_bias`).
NO_DECAY_NAMES = ("gamma", "beta", "bias")


@keras.saving.register_keras_serializable(package="bert")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear
    decay to 0 at `total_steps` (google-research/bert's schedule).

    Args:
        peak: float. Learning rate reached at the end of warm-up.
        total_steps: int. Step at which the rate reaches 0.
        warmup_steps: int. Steps of linear warm-up (0 = none).
    """

    def __init__(self, peak, total_steps, warmup_steps):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.cast(max(self.warmup_steps, 1), "float32")
        total = ops.cast(max(self.total_steps, 1), "float32")
        decay = self.peak * ops.maximum(0.0, 1.0 - step / total)
        if self.warmup_steps <= 0:
            return decay
        warm = self.peak * step / warmup
        return ops.where(step < warmup, warm, decay)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


def create_optimizer(
    *,
    learning_rate,
    total_steps,
    warmup_steps=0,
    weight_decay=0.01,
    optimizer="adamw",
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-6,
    global_clipnorm=None,
):
    """Returns a Keras AdamW or Lamb optimizer with BERT's schedule.

    Args:
        learning_rate: float, peak rate after warm-up.
        total_steps, warmup_steps: int, schedule lengths in optimizer steps.
            `total_steps=None`: no schedule; the rate is a constant that
            Keras keeps in the optimizer's `learning_rate` variable, which a
            stateless (JAX) loop may overwrite each step with a rate it
            computes.
        weight_decay: float, decoupled decay (not on LayerNorm or biases).
        optimizer: "adamw" or "lamb".
        beta_1, beta_2, epsilon: Adam moments.
        global_clipnorm: float or None. Leave None in distributed TF loops,
            which clip the *summed* gradients themselves; set it (1.0) for
            single-device loops such as the JAX benchmark.
    """
    if total_steps is None:
        schedule = float(learning_rate)
    else:
        schedule = WarmupLinearDecay(learning_rate, total_steps, warmup_steps)
    common = dict(
        learning_rate=schedule,
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        weight_decay=weight_decay,
        global_clipnorm=global_clipnorm,
    )
    if optimizer == "adamw":
        opt = keras.optimizers.AdamW(**common)
    elif optimizer == "lamb":
        opt = keras.optimizers.Lamb(**common)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r} (adamw|lamb)")
    opt.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return opt
