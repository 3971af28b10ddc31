"""Trainer faults reproduced for real (issue 19): divergence, full disks,
damaged checkpoints, signals, finished directories, mismatched sizes.

In-process where the fault can be made in-process (a NaN learning rate, a
truncated checkpoint, a deleted index); real processes for signals and a
small tmpfs for the full disk.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from model import pretrain
from pretraining_records import tiny_flags, write_records
from testdata import file_size_limit

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


@pytest.fixture(scope="module")
def shared_records(tmp_path_factory):
    """The tiny records, written once for the module's finished runs."""
    return write_records(tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="module")
def _finished_run(shared_records, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("finished") / "run")
    pretrain.run(_tiny_run(shared_records, model_dir))
    return model_dir


@pytest.fixture
def finished_run(shared_records, _finished_run, tmp_path):
    """(records, a copy of one finished 4-step run saved at steps 2 and 4):
    each test damages its own copy; one pretraining run serves them all."""
    model_dir = str(tmp_path / "run")
    shutil.copytree(_finished_run, model_dir)
    return shared_records, model_dir


def test_tf_pretraining_stops_at_the_first_non_finite_loss(records_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    argv = tiny_flags(
        records_dir, model_dir, steps=20, learning_rate=1e6, warmup_steps=0
    )
    with pytest.raises(SystemExit) as e:
        pretrain.run(argv)
    line = str(e.value)
    # nan, or inf when the loss overflows before it turns nan.
    assert re.match(r"error: training diverged: loss (nan|-?inf) at step ", line), line
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


@pytest.mark.parametrize(
    "backend, signum",
    [
        ("tensorflow", signal.SIGINT),
        pytest.param("jax", signal.SIGTERM, marks=pytest.mark.slow),
    ],
)
def test_signal_saves_the_current_step_and_the_rerun_resumes(
    records_dir, tmp_path, capsys, backend, signum
):
    model_dir = str(tmp_path / "run")
    argv = tiny_flags(records_dir, model_dir, steps=400, save_every=100)
    proc = subprocess.Popen(
        _cmd(backend, argv),
        cwd=REPO,
        env=_env(backend),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= 3:
            proc.send_signal(signum)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    (line,) = [l for l in err.splitlines() if l.startswith("error: ")]
    name = signal.Signals(signum).name
    assert line.startswith(f"error: interrupted ({name}) at step "), line
    assert "Traceback" not in err
    stopped = int(line.split("at step ")[1].split(":")[0])
    assert 3 <= stopped < 100  # not a save_every step: saved because stopped
    names = os.listdir(os.path.join(model_dir, "checkpoints"))
    assert any(n.startswith(f"ckpt-{stopped}.") for n in names), names
    assert not os.path.exists(os.path.join(model_dir, "encoder.weights.h5"))
    # The rerun resumes at the saved step and logs each step once (in a
    # process of its backend: under JAX a subprocess, under TF this one).
    argv = tiny_flags(records_dir, model_dir, steps=stopped + 2, save_every=100)
    if backend == "jax":
        out = subprocess.run(
            _cmd(backend, argv),
            cwd=REPO,
            env=_env(backend),
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        stdout = out.stdout
    else:
        capsys.readouterr()
        pretrain.run(argv)
        stdout = capsys.readouterr().out
    assert f"at step {stopped}" in stdout
    assert _steps_logged(model_dir) == list(range(1, stopped + 3))


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk, leave):
    """Fills `disk` until only about `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


def _leftovers(directory):
    found = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            if ".tmp-" in name or "_temp" in name or name.startswith("tmp-"):
                found.append(os.path.join(root, name))
    return found


def test_write_atomic_on_a_full_disk_names_the_file_and_leaves_nothing(small_disk):
    from configs import fileio

    _fill(small_disk, 8 * 1024)
    target = small_disk / "config.yaml"
    target.write_text("old: 1\n")
    with pytest.raises(OSError) as e:
        fileio.write_atomic(str(target), "x" * 200_000)
    assert fileio.is_disk_full(e.value) and e.value.filename == str(target)
    assert target.read_text() == "old: 1\n"  # the old file, whole
    assert _leftovers(small_disk) == []
    line = fileio.disk_full_line(e.value)
    assert line.startswith(f"no space left on device writing {target}; ")
    assert "free there" in line


def test_pretraining_on_a_full_disk_is_one_line_and_a_rerun_recovers(
    records_dir, small_disk
):
    model_dir = str(small_disk / "run")
    filler = _fill(small_disk, 64 * 1024)  # config and logs fit, checkpoints not
    argv = tiny_flags(records_dir, model_dir, steps=4)
    with pytest.raises(SystemExit) as e:
        pretrain.run(argv)
    line = str(e.value)
    assert line.startswith("error: no space left on device writing "), line
    assert model_dir in line and "free there" in line and "\n" not in line
    assert not os.path.exists(os.path.join(model_dir, "encoder.weights.h5"))
    assert _leftovers(model_dir) == []
    # What a killed run leaves (a TF checkpoint temp, a cut weights temp)
    # is cleared by the next run, which then finishes.
    os.remove(filler)
    os.makedirs(os.path.join(model_dir, "checkpoints", "ckpt-2_temp"))
    open(os.path.join(model_dir, "tmp-dead0000-encoder.weights.h5"), "w").close()
    open(os.path.join(model_dir, "config.yaml.tmp-dead0000"), "w").close()
    pretrain.run(argv)
    assert os.path.exists(os.path.join(model_dir, "encoder.weights.h5"))
    assert _leftovers(model_dir) == []


def _tiny_run(records_dir, model_dir, **flags):
    flags = dict(dict(steps=4, save_every=2), **flags)
    return tiny_flags(records_dir, model_dir, **flags)


def _ckpt_files(model_dir, step):
    directory = os.path.join(model_dir, "checkpoints")
    return [
        os.path.join(directory, n)
        for n in os.listdir(directory)
        if n.startswith(f"ckpt-{step}.")
    ]


def test_cut_newest_checkpoint_falls_back_to_the_newest_intact(finished_run, capsys):
    records_dir, model_dir = finished_run
    (data,) = [f for f in _ckpt_files(model_dir, 4) if ".data-" in f]
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    capsys.readouterr()
    pretrain.run(_tiny_run(records_dir, model_dir, steps=6))
    out = capsys.readouterr().out
    assert f"checkpoint {model_dir}/checkpoints/ckpt-4 is damaged (" in out
    assert f"falling back to {model_dir}/checkpoints/ckpt-2, the newest" in out
    assert "at step 2" in out
    assert _steps_logged(model_dir) == [1, 2, 3, 4, 5, 6]


def test_deleted_checkpoint_index_resumes_from_the_files(finished_run, capsys):
    records_dir, model_dir = finished_run
    os.remove(os.path.join(model_dir, "checkpoints", "checkpoint"))
    capsys.readouterr()
    pretrain.run(_tiny_run(records_dir, model_dir, steps=6))
    out = capsys.readouterr().out
    assert "(the index) is missing: resuming from the checkpoint files" in out
    assert "at step 4" in out
    assert _steps_logged(model_dir) == [1, 2, 3, 4, 5, 6]
    import tensorflow as tf

    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))


def test_no_readable_checkpoint_is_refused_until_overwrite(finished_run):
    records_dir, model_dir = finished_run
    for step in (2, 4):
        for path in _ckpt_files(model_dir, step):
            open(path, "wb").close()  # every checkpoint cut to nothing
    with pytest.raises(SystemExit) as e:
        pretrain.run(_tiny_run(records_dir, model_dir, steps=6))
    line = str(e.value)
    assert line.startswith(f"error: no checkpoint in {model_dir}/checkpoints can")
    assert "--overwrite" in line and "\n" not in line
    assert _steps_logged(model_dir) == [1, 2, 3, 4]  # history untouched
    pretrain.run(_tiny_run(records_dir, model_dir, steps=2) + ["--overwrite"])
    assert _steps_logged(model_dir) == [1, 2]


def test_resuming_with_another_model_size_names_the_setting(finished_run):
    records_dir, model_dir = finished_run
    argv = _tiny_run(records_dir, model_dir) + [
        "--set=model.hidden_dim=32",
        "--set=model.intermediate_dim=64",
    ]
    with pytest.raises(SystemExit) as e:
        pretrain.run(argv)
    line = str(e.value)
    assert line.startswith("error: model.hidden_dim is 32 here but 16 in "), line
    assert f"{model_dir}/config.yaml" in line and "\n" not in line


def test_vocabulary_size_comes_from_the_records(records_dir, tmp_path, capsys):
    # Records made with a 120-token vocabulary, no vocabulary_size given.
    argv = [
        a
        for a in tiny_flags(records_dir, str(tmp_path / "run"), steps=1)
        if "model.vocabulary_size" not in a
    ]
    pretrain.run(argv)
    assert "model.vocabulary_size 120 (from metadata.json)" in capsys.readouterr().out
    from configs.loader import load_resolved

    assert load_resolved(str(tmp_path / "run")).model.vocabulary_size == 120
    # A real conflict names the exact setting to pass.
    with pytest.raises(SystemExit) as e:
        pretrain.run(argv + ["--set=model.vocabulary_size=200"])
    assert "--set model.vocabulary_size=120" in str(e.value)


def test_jax_checkpoint_files_fall_back_past_a_cut_file(tmp_path, capsys):
    # The JAX backend's .npz checkpoints (the class is backend-neutral
    # Keras code, so it runs here under TensorFlow too).
    import keras
    import numpy as np

    from model import jax_training

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    files = jax_training.CheckpointFiles(
        str(tmp_path), model=model, optimizer=optimizer, keep=5
    )
    for step in (2, 4):
        files.save(step, jax_training.initial_state(model, optimizer))
    newest = tmp_path / "checkpoints" / "ckpt-4.npz"
    newest.write_bytes(newest.read_bytes()[:100])
    assert files.restore() == (2, str(tmp_path / "checkpoints" / "ckpt-2.npz"))
    out = capsys.readouterr().out
    assert f"checkpoint {newest} is damaged (" in out
    assert "falling back to" in out and "ckpt-2.npz" in out
    (tmp_path / "checkpoints" / "ckpt-2.npz").write_bytes(b"not a zip")
    from model.training import CheckpointError

    with pytest.raises(CheckpointError, match="--overwrite"):
        files.restore()
    assert np.isfinite(keras.ops.convert_to_numpy(model.weights[0])).all()


@pytest.mark.slow
def test_jax_pretraining_stops_at_the_first_non_finite_loss(records_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    argv = tiny_flags(
        records_dir, model_dir, steps=20, learning_rate=1e6, warmup_steps=0
    )
    out = subprocess.run(
        _cmd("jax", argv), cwd=REPO, env=_env("jax"), capture_output=True, text=True
    )
    assert out.returncode == 1, out.stderr[-2000:]
    (line,) = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert re.match(
        r"error: training diverged: loss (nan|inf|-inf) at step ", line
    ), line
    step = int(line.split("at step ")[1].split()[0])
    assert not os.path.exists(os.path.join(model_dir, "encoder.weights.h5"))
    names = os.listdir(os.path.join(model_dir, "checkpoints"))
    assert all(int(n[5:].split(".")[0]) < step for n in names), names


def test_finished_run_without_checkpoints_is_not_restarted_over(finished_run):
    records_dir, model_dir = finished_run
    shutil.rmtree(os.path.join(model_dir, "checkpoints"))
    with pytest.raises(SystemExit) as e:
        pretrain.run(_tiny_run(records_dir, model_dir, steps=2))
    line = str(e.value)
    assert "holds a finished run (encoder.weights.h5) but no checkpoints" in line
    assert "--overwrite" in line and _steps_logged(model_dir) == [1, 2, 3, 4]


def test_checkpoint_past_a_file_size_limit_is_one_line_and_leaves_nothing(
    shared_records, tmp_path
):
    # EFBIG for real, without a mount: the first checkpoint (~120 KiB of
    # weights and Adam slots) cannot be written past 64 KiB; config.yaml and
    # metrics.jsonl can.
    model_dir = str(tmp_path / "run")
    with file_size_limit(64 * 1024), pytest.raises(SystemExit) as e:
        pretrain.run(_tiny_run(shared_records, model_dir))
    line = str(e.value)
    assert line.startswith(f"error: file too large writing {model_dir}"), line
    assert "ulimit -f" in line and "\n" not in line
    assert not os.path.exists(os.path.join(model_dir, "encoder.weights.h5"))
    assert _leftovers(model_dir) == []
