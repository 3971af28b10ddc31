"""`model.pretrain` under `KERAS_BACKEND=jax`, with TensorFlow unimportable.

The pytest process runs Keras on TensorFlow (the backend is fixed at
import), so every JAX run is a subprocess started through `jax_run.py`,
which blocks `tensorflow` and `tensorflow_text` the way a JAX-only machine
lacks them.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from pretraining_records import TINY_SEQ, tiny_flags, write_records

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JAX_RUN = os.path.join(REPO, "tests", "model", "jax_run.py")
METRIC_KEYS = (
    "loss",
    "mlm_loss",
    "sentence_loss",
    "mlm_accuracy",
    "sentence_accuracy",
    "learning_rate",
    "examples_per_second",
)


def jax_env(devices=1):
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests", "model")]),
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_PLATFORMS="cpu",
    )
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def jax_pretrain(argv, devices=1, **kwargs):
    cmd = [sys.executable, "-u", JAX_RUN, "-m", "model.pretrain"] + argv
    return subprocess.run(
        cmd, cwd=REPO, env=jax_env(devices), capture_output=True, text=True, **kwargs
    )


def metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def jax_run_dir(tmp_path_factory):
    """One tiny JAX pretraining run (dynamic masking) shared by the tests."""
    base = tmp_path_factory.mktemp("jax")
    data = write_records(base / "records")
    model_dir = str(base / "run")
    out = jax_pretrain(
        tiny_flags(
            data, model_dir, steps=6, masking="dynamic", steps_per_loop=2, log_every=2
        )
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return model_dir


def test_jax_run_writes_what_the_tf_run_writes(jax_run_dir):
    for name in (
        "config.yaml",
        "encoder.weights.h5",
        "metrics.png",
        "vocab.txt",
        "checkpoints/ckpt-6.npz",
    ):
        assert os.path.exists(os.path.join(jax_run_dir, name)), name
    with open(os.path.join(jax_run_dir, "config.yaml")) as f:
        pretrain_cfg = yaml.safe_load(f)["pretrain"]
    assert pretrain_cfg["backend"] == "jax"
    assert pretrain_cfg["precision"] == "float32"  # auto on CPU / as asked
    records = metrics(jax_run_dir)
    assert [r["step"] for r in records] == [2, 4, 6]
    assert records[0]["first_call_seconds"] > 0
    for key in METRIC_KEYS:
        assert np.isfinite(records[-1][key]), key
    # Warm-up of 1 step, then linear decay to 0 at step 6.
    assert records[-1]["learning_rate"] == pytest.approx(1e-3 * (1 - 5 / 6))
    # TensorBoard scalars without TensorFlow, readable by TensorFlow.
    import glob

    import tensorflow as tf

    (events,) = glob.glob(os.path.join(jax_run_dir, "logs", "train", "events.*"))
    logged = {
        e.step: {v.tag: v.simple_value for v in e.summary.value}
        for e in tf.compat.v1.train.summary_iterator(events)
        if e.summary.value
    }
    assert sorted(logged) == [2, 4, 6]
    assert logged[6]["loss"] == pytest.approx(records[-1]["loss"], rel=1e-6)


def test_jax_encoder_fine_tunes_and_exports_under_tensorflow(jax_run_dir, tmp_path):
    # The pytest process is on TensorFlow: the JAX run's weights load here,
    # fine-tune with `model.finetune --init_checkpoint` and export.
    import tensorflow as tf

    from model import export, finetune
    from model.bert_backbone import load_pretrained_backbone

    backbone = load_pretrained_backbone(jax_run_dir)
    assert backbone.hidden_dim == 16
    rows = ["sentence\tlabel"] + [f"w{i} w{i + 1}\t{i % 2}" for i in range(16)]
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(rows) + "\n")
    model_dir, serving = str(tmp_path / "ft"), str(tmp_path / "serving")
    finetune.run(
        [
            "--config=configs/finetune/sst2.yaml",
            f"--train={train}",
            f"--eval={train}",
            f"--model_dir={model_dir}",
            f"--init_checkpoint={jax_run_dir}",
            "--max_steps=2",
            "--set=finetune.batch_size=8",
            "--set=finetune.max_seq_length=16",
        ]
    )
    export.run([f"--model_dir={model_dir}", f"--export_dir={serving}"])
    outputs = tf.saved_model.load(serving).signatures["serving_default"](
        text=tf.constant(["w1 w2", "w3"])
    )
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)


# Slow: the same fault as test_pretrain.py's SIGKILL test (fast, TF), at
# two JAX compiles; the .npz fallback is test_train_faults.py's (fast).
@pytest.mark.slow
def test_sigkilled_jax_run_resumes_without_lost_or_repeated_steps(
    records_dir, tmp_path
):
    model_dir = str(tmp_path / "run")
    argv = tiny_flags(records_dir, model_dir, steps=40, save_every=5)
    cmd = [sys.executable, "-u", JAX_RUN, "-m", "model.pretrain"] + argv
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=jax_env(),
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
    assert killed_at is not None and killed_at < 40
    saved = sorted(
        int(n[5:-4])
        for n in os.listdir(os.path.join(model_dir, "checkpoints"))
        if n.startswith("ckpt-") and n.endswith(".npz")
    )
    assert saved and 10 <= saved[-1] <= killed_at and saved[-1] % 5 == 0
    # No half-written checkpoint under a final name, whatever the kill hit.
    out = jax_pretrain(argv)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"at step {saved[-1]}" in out.stdout
    assert [r["step"] for r in metrics(model_dir)] == list(range(1, 41))


TWO_STRATEGIES_SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [".", "tests/model"]
    from model import pretrain
    from pretraining_records import tiny_flags
    data, out = sys.argv[1], sys.argv[2]
    for strategy in ("default", "mirrored"):
        pretrain.run(tiny_flags(data, out + "/" + strategy, steps=3,
                                strategy=strategy))
    """)


def test_two_forced_devices_give_the_one_device_losses(records_dir, tmp_path):
    # Both runs in one process (one JAX start-up, not two).
    script = tmp_path / "two.py"
    script.write_text(TWO_STRATEGIES_SCRIPT)
    out = subprocess.run(
        [sys.executable, JAX_RUN, str(script), records_dir, str(tmp_path)],
        cwd=REPO,
        env=jax_env(devices=2),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = {s: metrics(str(tmp_path / s)) for s in ("default", "mirrored")}
    assert [r["step"] for r in runs["mirrored"]] == [1, 2, 3]
    for a, b in zip(runs["default"], runs["mirrored"]):
        for key in ("loss", "mlm_loss", "sentence_loss", "mlm_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a, b)


LOSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path[:0] = [".", "tests/model"]
    from model.bert_backbone import BertBackbone
    from model.bert_pretrainer import BertPretrainer, pretraining_losses, INPUT_KEYS
    from configs.schema import ModelConfig
    cfg = ModelConfig(**json.loads(sys.argv[1]))
    pretrainer = BertPretrainer(BertBackbone.from_model_config(cfg))
    pretrainer.load_weights(sys.argv[2])
    batch = dict(np.load(sys.argv[3]))
    outputs = pretrainer({k: batch[k] for k in INPUT_KEYS}, training=False)
    losses = pretraining_losses(batch, outputs)
    print(json.dumps({k: float(np.asarray(v)) for k, v in losses.items()}))
    """)


def test_tf_and_jax_losses_agree_in_float32(tmp_path):
    from model.bert_backbone import BertBackbone
    from model.bert_pretrainer import BertPretrainer
    from pretraining_records import make_examples

    sizes = dict(
        vocabulary_size=120,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=64,
    )
    from configs.schema import ModelConfig

    pretrainer = BertPretrainer(BertBackbone.from_model_config(ModelConfig(**sizes)))
    weights = str(tmp_path / "pretrainer.weights.h5")
    pretrainer.save_weights(weights)
    examples = make_examples(8)
    batch = {
        k: np.stack([e[k] for e in examples]).astype(
            "float32" if k == "masked_lm_weights" else "int32"
        )
        for k in examples[0]
    }
    np.savez(tmp_path / "batch.npz", **batch)
    script = str(tmp_path / "loss.py")
    with open(script, "w") as f:
        f.write(LOSS_SCRIPT)
    # TensorFlow here (this process's backend), JAX in a subprocess.
    from model.bert_pretrainer import INPUT_KEYS, pretraining_losses

    outputs = pretrainer({k: batch[k] for k in INPUT_KEYS}, training=False)
    results = {
        "tensorflow": {
            k: float(np.asarray(v))
            for k, v in pretraining_losses(batch, outputs).items()
        }
    }
    cmd = [sys.executable, JAX_RUN, script, json.dumps(sizes), weights]
    cmd.append(str(tmp_path / "batch.npz"))
    out = subprocess.run(cmd, cwd=REPO, env=jax_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    results["jax"] = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("loss", "mlm_loss", "sentence_loss"):
        assert results["jax"][key] == pytest.approx(
            results["tensorflow"][key], abs=1e-4
        ), key


@pytest.mark.parametrize(
    "fault, message",
    [
        ("gzip", "gzip"),
        ("truncate", "truncated"),
        ("seq", "max_seq_length"),
    ],
)
def test_bad_records_stop_a_jax_run_with_one_line(tmp_path, fault, message):
    data = write_records(tmp_path / "records", num=16, num_shards=1)
    shard = [n for n in os.listdir(data) if ".tfrecord" in n][0]
    path = os.path.join(data, shard)
    argv = tiny_flags(data, str(tmp_path / "run"), steps=2)
    if fault == "gzip":
        # gzip bytes under an uncompressed name (.gz names are read as gzip).
        import gzip

        with open(path, "rb") as f:
            raw = f.read()
        with gzip.open(path, "wb") as f:
            f.write(raw)
    elif fault == "truncate":
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size - 7)
    else:
        argv.append(f"--set=data.max_seq_length={TINY_SEQ * 2}")
    out = jax_pretrain(argv)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert message in (out.stderr + out.stdout).lower()
    assert not os.path.exists(os.path.join(tmp_path, "run", "checkpoints"))


@pytest.mark.slow
def test_multi_host_two_local_processes(tmp_path):
    """`--strategy=multi_worker` under JAX: `keras.distribution.initialize()`
    from the KERAS_DISTRIBUTION_* environment, two processes (gloo on CPU),
    each reading its half of the shards; process 0 writes the outputs."""
    import socket

    data = write_records(tmp_path / "records", num=64, num_shards=4)
    model_dir = str(tmp_path / "run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = tiny_flags(data, model_dir, steps=3, strategy="multi_worker")
    procs = []
    for rank in range(2):
        env = dict(
            jax_env(),
            JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(rank),
        )
        cmd = [sys.executable, "-u", JAX_RUN, "-m", "model.pretrain"] + argv
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()[-3000:]
    assert [r["step"] for r in metrics(model_dir)] == [1, 2, 3]
    assert os.path.exists(os.path.join(model_dir, "encoder.weights.h5"))
    assert b"step 3/3" in outs[0][0] and b"step " not in outs[1][0]
