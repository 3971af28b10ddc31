import json

import pytest

from model import training

CPU_PRECISION = "mixed_bfloat16" if training._cpu_has_bf16() else "float32"


@pytest.mark.parametrize(
    "hidden, device, replicas, want",
    [
        (128, "cpu", 1, (CPU_PRECISION, False)),
        (512, "cpu", 1, (CPU_PRECISION, False)),
        (128, "cpu", 2, (CPU_PRECISION, False)),
        (768, "gpu", 1, ("mixed_bfloat16", True)),
        (1024, "tpu", 8, ("mixed_bfloat16", False)),
    ],
)
def test_choose_fast_path(hidden, device, replicas, want):
    assert training.choose_fast_path("auto", "auto", hidden, device, replicas) == want


def test_choose_fast_path_respects_explicit_settings():
    assert training.choose_fast_path("mixed_float16", "true", 64, "cpu", 2) == (
        "mixed_float16",
        True,
    )


def test_metrics_logger_drops_steps_after_resume_point(tmp_path):
    logger = training.MetricsLogger(str(tmp_path))
    for step in (1, 2, 3, 4):
        logger.log(step, {"loss": 5.0 - step, "mlm_accuracy": 0.1 * step})
    training.MetricsLogger(str(tmp_path), resume_step=2)
    records = training.read_metrics(str(tmp_path / training.METRICS_FILE))
    assert [r["step"] for r in records] == [1, 2]
    png = training.plot_metrics(
        str(tmp_path / training.METRICS_FILE), str(tmp_path / "m.png")
    )
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads(json.dumps(records[0]))["loss"] == 4.0


APPLY_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras
sys.path.insert(0, ".")
from model import training

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    w = keras.Variable(np.zeros(3, "float32"))
    opt = keras.optimizers.SGD(learning_rate=1.0)
    opt.build([w])
xs = tf.constant([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])  # one row per replica

def step(clipnorm):
    def replica_fn():
        i = tf.distribute.get_replica_context().replica_id_in_sync_group
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w * tf.gather(xs, i)) / 2.0  # global batch 2
        return training.apply_gradients(opt, loss, tape, [w], clipnorm, 2)
    return strategy.reduce("MEAN", strategy.run(replica_fn), axis=None)

norm = tf.function(step)(0.0)
# Global gradient (1+3, 2+0, 0) / 2 = (2, 1, 0): SGD(lr 1) moves w by -grad.
np.testing.assert_allclose(w.numpy(), [-2.0, -1.0, 0.0], atol=1e-6)
np.testing.assert_allclose(norm.numpy(), np.sqrt(5.0), rtol=1e-6)
tf.function(step)(1.0)  # clipped to norm 1: (2, 1, 0) / sqrt(5)
np.testing.assert_allclose(
    w.numpy(), [-2.0 - 2 / 5**0.5, -1.0 - 1 / 5**0.5, 0.0], atol=1e-6
)
assert opt._grads_summed_by_loop  # Keras' second all-reduce is off
print("OK")
"""


def test_apply_gradients_sums_replicas_once_and_clips_global_norm():
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", APPLY_SCRIPT],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
