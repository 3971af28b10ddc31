import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from model import pretrain
from pretraining_records import tiny_flags, write_records

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_pretrain_writes_every_output(records_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    pretrain.run(tiny_flags(records_dir, model_dir, steps=4, masking="dynamic"))
    for name in ("config.yaml", "encoder.weights.h5", "metrics.png", "logs"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    records = _metrics(model_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in (
        "loss",
        "mlm_loss",
        "mlm_accuracy",
        "sentence_loss",
        "sentence_accuracy",
        "learning_rate",
        "examples_per_second",
    ):
        assert np.isfinite(records[-1][key]), key
    # The first call (tracing) is timed apart, not mixed into a throughput.
    assert records[0]["first_call_seconds"] > 0
    assert "examples_per_second" not in records[0]
    assert "ETA" in capsys.readouterr().out
    # The encoder is ready for fine-tuning.
    from model.bert_backbone import load_pretrained_backbone

    backbone = load_pretrained_backbone(model_dir)
    assert backbone.hidden_dim == 16


@pytest.mark.parametrize(
    "override, message",
    [
        ("--set=data.max_seq_length=48", "max_seq_length is 32 in the records, 48"),
        ("--set=model.vocabulary_size=200", "vocab_size is 120 in the records, 200"),
        (
            "--set=data.max_predictions_per_seq=7",
            "max_predictions_per_seq is 5 in the records, 7",
        ),
    ],
)
def test_metadata_mismatch_is_refused_before_building(
    records_dir, tmp_path, override, message
):
    model_dir = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        pretrain.run(tiny_flags(records_dir, model_dir) + [override])
    assert str(e.value).startswith("error: records do not match the config")
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert not os.path.exists(model_dir)


def test_records_without_metadata_use_their_lengths(tmp_path, capsys):
    data = write_records(tmp_path / "google", num=16, seq=24, pred=4, metadata=False)
    model_dir = str(tmp_path / "run")
    pretrain.run(tiny_flags(data, model_dir, steps=1))
    assert "no metadata.json" in capsys.readouterr().out
    from configs.loader import load_resolved

    cfg = load_resolved(model_dir)
    assert (cfg.data.max_seq_length, cfg.data.max_predictions_per_seq) == (24, 4)


def test_tiny_model_overfits_a_fixed_batch(tmp_path):
    # One batch of 8 records, seen every step: loss must fall by > half.
    data = write_records(tmp_path / "fixed", num=8, num_shards=1)
    model_dir = str(tmp_path / "run")
    pretrain.run(
        tiny_flags(
            data,
            model_dir,
            steps=40,
            learning_rate=2e-2,
            warmup_steps=4,
            log_every=10,
            save_every=40,
            jit_compile="true",
            steps_per_loop=10,
        )
        + ["--set=model.hidden_dim=32", "--set=model.intermediate_dim=64"]
    )
    records = _metrics(model_dir)
    assert records[-1]["loss"] < 0.5 * records[0]["loss"], records


def test_sigkilled_run_resumes_at_last_checkpoint(records_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    argv = tiny_flags(records_dir, model_dir, steps=60, save_every=5)
    cmd = [sys.executable, "-u", "-m", "model.pretrain"] + argv
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    killed_at = None
    for line in proc.stdout:
        if line.startswith("step "):
            step = int(line.split()[1].split("/")[0])
            if step >= 12:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
    proc.wait()
    assert killed_at is not None and killed_at < 60
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    saved = int(latest.rsplit("-", 1)[1])
    assert 10 <= saved <= killed_at and saved % 5 == 0

    # The rerun (in this process: the kill was real, resuming is the same
    # code) starts at the saved step.
    pretrain.run(argv)
    assert f"at step {saved}" in capsys.readouterr().out
    steps = [r["step"] for r in _metrics(model_dir)]
    assert steps == list(range(1, 61))  # each step logged once, none lost
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest.endswith("ckpt-60")


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    sys.path[:0] = [".", "tests/model"]
    from model import pretrain
    from pretraining_records import tiny_flags
    data, out = sys.argv[1], sys.argv[2]
    for strategy in ("one_device", "mirrored"):
        pretrain.run(tiny_flags(data, out + "/" + strategy, steps=3,
                                strategy=strategy, save_every=3))
    """)


def test_mirrored_two_replicas_equals_one_device(records_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, records_dir, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    one = _metrics(str(tmp_path / "one_device"))
    two = _metrics(str(tmp_path / "mirrored"))
    for a, b in zip(one, two):
        for key in ("loss", "mlm_loss", "sentence_loss", "mlm_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a, b)


MULTI_WORKER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path[:0] = [".", "tests/model"]
    from model import pretrain
    from pretraining_records import tiny_flags
    data, out = sys.argv[1], sys.argv[2]
    pretrain.run(tiny_flags(data, out, steps=3, strategy="multi_worker",
                            save_every=3))
    """)


@pytest.mark.slow
def test_multi_worker_two_local_processes(records_dir, tmp_path):
    import socket

    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("localhost", 0))
        ports.append(s.getsockname()[1])
        s.close()
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(
            os.environ,
            PYTHONPATH=REPO,
            TF_CPP_MIN_LOG_LEVEL="3",
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    MULTI_WORKER_SCRIPT,
                    records_dir,
                    str(tmp_path / "run"),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    records = _metrics(str(tmp_path / "run"))
    assert [r["step"] for r in records] == [1, 2, 3]
    assert os.path.exists(str(tmp_path / "run" / "encoder.weights.h5"))


def test_budget_sizes_steps_and_schedule_to_the_wall_clock(
    records_dir, tmp_path, capsys, monkeypatch
):
    import re

    import yaml

    from model import pretrain_budget

    # The re-fits come as soon as they can and reschedule whatever the
    # pace: the path is exercised on a machine of any speed.
    monkeypatch.setattr(pretrain_budget, "REFIT_AT", (0.0, 0.0))
    monkeypatch.setattr(pretrain_budget, "REFIT_TOLERANCE", -1.0)
    model_dir = str(tmp_path / "run")
    argv = tiny_flags(records_dir, model_dir, steps=10**6, save_every=10**6)
    argv += [
        # 30 s: start-up, the 5 s probe, a compile and the 10 s final save
        # leave steps to add, and so schedules to fit again.
        "--budget_minutes=0.5",
        "--log_every=5",
        "--set=pretrain.warmup_fraction=0.1",
    ]
    pretrain.run(argv)
    out = capsys.readouterr().out
    with open(os.path.join(model_dir, "config.yaml")) as f:
        p = yaml.safe_load(f)["pretrain"]
    records = _metrics(model_dir)
    fits = re.findall(
        r"budget 0.5 min: [\d.]+ steps/s measured -> (\d+) steps, " r"warm-up (\d+)",
        out,
    )
    # The first fit after the probe, then a re-fit at each REFIT_AT, but
    # for one that finds the budget spent (the run stops there).
    refits = out.count("budget re-fit at")
    assert 1 <= refits <= len(pretrain_budget.REFIT_AT), out
    assert len(fits) == 1 + refits
    assert refits == len(pretrain_budget.REFIT_AT) or "budget spent: the run" in out
    assert "note: start-up and compiling" not in out
    first_total, first_warmup = (int(v) for v in fits[0])
    assert first_warmup == max(1, round(0.1 * first_total))
    # The run ended at the step count it fixed last, and recorded it, with
    # the warm-up that ran (it was over at the re-fits).
    assert 5 < p["steps"] < 10**6
    assert int(fits[-1][0]) == p["steps"] == records[-1]["step"]
    assert p["warmup_steps"] == first_warmup
    # The schedule was resized to it: the rate decays to ~0 at the end.
    assert records[-1]["learning_rate"] <= 1e-3 * 2 / (0.9 * p["steps"]) + 1e-12
    assert os.path.exists(os.path.join(model_dir, "encoder.weights.h5"))
