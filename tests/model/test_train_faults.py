"""Trainer faults reproduced for real (issue 19): divergence, full disks,
damaged checkpoints, signals, finished directories, mismatched sizes.

In-process where the fault can be made in-process (a NaN learning rate, a
truncated checkpoint, a deleted index); real processes for signals and a
small tmpfs for the full disk.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from model import pretrain
from pretraining_records import tiny_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JAX_RUN = os.path.join(REPO, "tests", "model", "jax_run.py")


def _env(backend="tensorflow"):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests", "model")]),
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_BACKEND=backend,
    )
    if backend == "jax":
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _cmd(backend, argv):
    if backend == "jax":
        return [sys.executable, "-u", JAX_RUN, "-m", "model.pretrain"] + argv
    return [sys.executable, "-u", "-m", "model.pretrain"] + argv


def _steps_logged(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def test_tf_pretraining_stops_at_the_first_non_finite_loss(records_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    argv = tiny_flags(
        records_dir, model_dir, steps=20, learning_rate=1e6, warmup_steps=0
    )
    with pytest.raises(SystemExit) as e:
        pretrain.run(argv)
    line = str(e.value)
    assert line.startswith("error: training diverged: loss nan at step "), line
    assert "last finite loss" in line and "; learning rate " in line
    assert "\n" not in line
    step = int(line.split("at step ")[1].split()[0])
    # Nothing of the NaN state was written: no checkpoint at or after it,
    # no final weights, no NaN line in metrics.jsonl.
    assert not os.path.exists(os.path.join(model_dir, "encoder.weights.h5"))
    ckpts = os.listdir(os.path.join(model_dir, "checkpoints"))
    saved = [int(n.split("-")[1].split(".")[0]) for n in ckpts if n.startswith("ckpt-")]
    assert all(s < step for s in saved), (saved, step)
    assert all(s < step for s in _steps_logged(model_dir))
