"""Pretraining throughput on CPU: our `model.pretrain` vs keras-hub.

    .venv/bin/python benchmarks/train_throughput.py [--sizes=tiny,mini,small]
        [--windows=5 --window_steps=5] [--kh_settings=f32_xla,bf16]
        [--backends=tensorflow,jax --skip_keras_hub]

Model sizes are the product's (`configs/pretrain/bert_<size>.yaml`).

Sequences/s of a full optimizer step, batch 32, sequence length 128,
vocabulary 30522, 20 predictions per sequence, for BERT tiny/mini/small:

- ours: `python -m model.pretrain` itself on synthetic records (the real
  input pipeline, train step and defaults: precision/XLA `auto`), read from
  its `metrics.jsonl` (`examples_per_second` per `--window_steps` window),
  on each Keras backend in `--backends` (`KERAS_BACKEND`);
- keras-hub: `keras_hub.models.BertMaskedLM` on a `BertBackbone` of the same
  sizes built from scratch, `fit()` on synthetic batches, AdamW with the same
  settings, at each setting in `--kh_settings`; its best one counts.

Tracing/compilation is not timed (our metrics.jsonl times the first call
apart) and the first window is dropped on both sides; medians of the rest
are reported, with ratios ours / keras-hub best (target >= 1.2), as a
markdown table ready for results/train_throughput.md, headed by the date,
commit, CPU and load average. Each run is its
own process. keras-hub is installed on first use into `benchmarks/.venv-kh`
(which sees this project's venv for TensorFlow/Keras through a `.pth` file).
This CPU flips between speed modes and is shared: compare within one run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
KH_VENV = os.path.join(HERE, ".venv-kh")
KH_VERSION = "0.32.0"

VOCAB, SEQ, PRED, BATCH = 30522, 128, 20, 32
TARGET = 1.2  # issue 4: ours >= 1.2x keras-hub's best setting per size
KH_SETTINGS = {
    "f32_xla": ("float32", True),
    "f32": ("float32", False),
    "bf16": ("mixed_bfloat16", False),
    "bf16_xla": ("mixed_bfloat16", True),
}


def sizes(size):
    """Layer sizes of `configs/pretrain/bert_<size>.yaml` (the product's)."""
    sys.path.insert(0, REPO)
    from configs.loader import load_config

    m = load_config([f"pretrain/bert_{size}.yaml"], []).model
    return dict(
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        hidden_dim=m.hidden_dim,
        intermediate_dim=m.intermediate_dim,
    )


# === keras-hub side (runs inside benchmarks/.venv-kh) ===
def keras_hub_worker(size, setting, windows, window_steps):
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf

    policy, xla = KH_SETTINGS[setting]
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, max_sequence_length=512, dtype=policy, **sizes(size)
    )
    model = keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            1e-4, weight_decay=0.01, beta_2=0.999, epsilon=1e-6, global_clipnorm=1.0
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
        jit_compile=xla,
    )
    x, y, w = _synthetic_batch(np)
    inputs = {
        "token_ids": x["input_ids"],
        "padding_mask": x["input_mask"],
        "segment_ids": x["segment_ids"],
        "mask_positions": x["masked_lm_positions"],
    }
    dataset = tf.data.Dataset.from_tensors((inputs, y, w)).repeat()
    rates = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % window_steps == 0:
                float(logs["loss"])  # sync before reading the clock
                now = time.time()
                if hasattr(self, "t"):
                    rates.append(window_steps * BATCH / (now - self.t))
                self.t = now

    model.fit(
        dataset,
        steps_per_epoch=(windows + 1) * window_steps,
        epochs=1,
        verbose=0,
        callbacks=[Timer()],
    )
    return rates


def _synthetic_batch(np):
    rng = np.random.RandomState(0)
    ids = rng.randint(5, VOCAB, size=(BATCH, SEQ)).astype("int32")
    ids[:, 0] = 2
    positions = np.sort(
        np.stack(
            [rng.choice(np.arange(1, SEQ), PRED, replace=False) for _ in range(BATCH)]
        )
    ).astype("int32")
    x = {
        "input_ids": ids,
        "input_mask": np.ones_like(ids),
        "segment_ids": (np.arange(SEQ)[None, :] >= SEQ // 2).astype("int32")
        * np.ones_like(ids),
        "masked_lm_positions": positions,
    }
    y = np.take_along_axis(ids, positions, axis=1)
    return x, y, np.ones((BATCH, PRED), "float32")


# === our side: the real entry point ===
def write_records(directory, num=256):
    import numpy as np
    import tensorflow as tf

    from configs import features
    from configs.metadata import write_metadata

    x, y, w = _synthetic_batch(np)
    path = os.path.join(directory, "bench-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(num):
            row = i % BATCH
            values = {
                features.INPUT_IDS: x["input_ids"][row],
                features.INPUT_MASK: x["input_mask"][row],
                features.SEGMENT_IDS: x["segment_ids"][row],
                features.MASKED_LM_POSITIONS: x["masked_lm_positions"][row],
                features.MASKED_LM_IDS: y[row],
                features.NEXT_SENTENCE_LABELS: [i % 2],
            }
            feats = {
                k: tf.train.Feature(int64_list=tf.train.Int64List(value=v))
                for k, v in values.items()
            }
            feats[features.MASKED_LM_WEIGHTS] = tf.train.Feature(
                float_list=tf.train.FloatList(value=w[row])
            )
            writer.write(
                tf.train.Example(
                    features=tf.train.Features(feature=feats)
                ).SerializeToString()
            )
    write_metadata(
        directory,
        {
            "format_version": features.METADATA_FORMAT_VERSION,
            "kind": "pretraining",
            "num_examples": num,
            "num_shards": 1,
            "max_seq_length": SEQ,
            "max_predictions_per_seq": PRED,
            "vocab_size": VOCAB,
        },
    )


def ours(size, data, windows, window_steps, extra, backend="tensorflow"):
    model_dir = tempfile.mkdtemp(prefix=f"bench-{size}-{backend}-")
    argv = [
        sys.executable,
        "-m",
        "model.pretrain",
        f"--config=pretrain/bert_{size}.yaml",
        f"--data={data}",
        f"--model_dir={model_dir}",
        f"--steps={(windows + 1) * window_steps}",
        f"--batch_size={BATCH}",
        f"--log_every={window_steps}",
        f"--save_every={10 ** 6}",
        "--set=pretrain.shuffle_buffer=64",
    ] + list(extra)
    env = dict(
        os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend
    )
    out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(model_dir, "config.yaml")) as f:
        import yaml

        p = yaml.safe_load(f)["pretrain"]
    # metrics.jsonl times the first call (tracing) apart; the first timed
    # window is dropped too (warm-up), like keras-hub's.
    rates = [r["examples_per_second"] for r in records if "examples_per_second" in r]
    return rates[1:], f"{p['backend']} {p['precision']}+xla={p['jit_compile']}"


def ensure_keras_hub():
    python = os.path.join(KH_VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", KH_VENV], check=True)
        site = subprocess.run(
            [python, "-c", "import site; print(site.getsitepackages()[0])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        import site as our_site

        with open(os.path.join(site, "project_venv.pth"), "w") as f:
            f.write(our_site.getsitepackages()[0] + "\n")
    # safetensors: keras-hub's from_preset of a Hugging Face directory
    # needs it (benchmarks/hf_finetune.py) and does not declare it.
    check = subprocess.run(
        [python, "-c", "import keras_hub, safetensors"], capture_output=True
    )
    if check.returncode:
        subprocess.run(
            [python, "-m", "pip", "install", "-q"]
            + [f"keras-hub=={KH_VERSION}", "safetensors"],
            check=True,
        )
    return python


def keras_hub(python, size, setting, windows, window_steps):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    code = (
        f"import sys, json; sys.path.insert(0, {HERE!r}); import train_throughput as t; "
        f"print('RATES', json.dumps(t.keras_hub_worker({size!r}, {setting!r}, {windows}, {window_steps})))"
    )
    out = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    line = [l for l in out.stdout.splitlines() if l.startswith("RATES")][-1]
    return json.loads(line.split(" ", 1)[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,mini,small")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window_steps", type=int, default=5)
    parser.add_argument("--kh_settings", default="f32_xla,bf16")
    parser.add_argument("--skip_keras_hub", action="store_true")
    parser.add_argument(
        "--backends",
        default="tensorflow",
        help="Keras backends of our runs, comma-separated (tensorflow,jax); "
        "keras-hub is compared with the first",
    )
    parser.add_argument(
        "--ours_extra", default="", help="extra pretrain flags, comma-separated"
    )
    args = parser.parse_args()
    print(_header(args), flush=True)
    python = None if args.skip_keras_hub else ensure_keras_hub()
    data = tempfile.mkdtemp(prefix="bench-records-")
    sys.path.insert(0, REPO)
    write_records(data)
    extra = [f for f in args.ours_extra.split(",") if f]
    rows = []
    backends = args.backends.split(",")
    for size in args.sizes.split(","):
        mine = {}
        for backend in backends:
            rates, setting = ours(
                size, data, args.windows, args.window_steps, extra, backend
            )
            mine[backend] = (statistics.median(rates), setting)
            print(
                f"{size:6s} ours      {setting:30s} median "
                f"{mine[backend][0]:7.1f} seq/s  windows {[round(r, 1) for r in rates]}",
                flush=True,
            )
        best = None
        if python:
            for kh_setting in args.kh_settings.split(","):
                kh_rates = keras_hub(
                    python, size, kh_setting, args.windows, args.window_steps
                )
                med = statistics.median(kh_rates)
                print(
                    f"{size:6s} keras-hub {kh_setting:30s} median {med:7.1f} seq/s  windows {[round(r, 1) for r in kh_rates]}",
                    flush=True,
                )
                best = max(best or 0.0, med)
        rows.append((size, mine, best))
    print(f"\nload average at the end: {_load()}")
    print(
        "\nSequences/s (median of windows; batch 32, seq 128). ours = "
        "`python -m model.pretrain` with `auto` settings (records + NSP head)"
        " on each backend;\nkeras-hub = BertMaskedLM.fit() on an in-memory "
        f"batch, best of {args.kh_settings}. Target: ours >= {TARGET}x "
        "keras-hub's best.\n"
    )
    first = backends[0]
    head = " | ".join(f"{b} seq/s (setting)" for b in backends)
    ratios = " | ".join(f"{b} / {first}" for b in backends[1:])
    print(
        f"| size | {head} | {ratios + ' | ' if ratios else ''}keras-hub best seq/s | ratio | target |"
    )
    print("| --- " * (len(backends) * 2 + 3) + "|")
    for size, mine, best in rows:
        cells = " | ".join(f"{mine[b][0]:.1f} ({mine[b][1]})" for b in backends)
        rel = " | ".join(f"{mine[b][0] / mine[first][0]:.2f}x" for b in backends[1:])
        top = mine[first][0]
        ratio = f"{top / best:.2f}x" if best else "n/a"
        verdict = ("met" if top >= TARGET * best else "missed") if best else "n/a"
        best_text = f"{best:.1f}" if best else "n/a"
        print(
            f"| {size} | {cells} | {rel + ' | ' if rel else ''}{best_text} | {ratio} | {verdict} |"
        )


def _load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"


def _header(args):
    """Date, commit, CPU and load: what a reader needs to trust the run."""
    commit = subprocess.run(
        ["git", "-C", REPO, "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
        cpu = info.split("model name")[1].split(":", 1)[1].split("\n")[0].strip()
        flags = [x for x in ("amx_bf16", "avx512_bf16") if x in info]
        cpu += f" ({', '.join(flags) or 'no bf16 instructions'})"
    except (OSError, IndexError):
        pass
    return "\n".join(
        [
            f"train_throughput {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"commit: {commit}{' (+ uncommitted changes)' if dirty else ''}",
            f"cpu: {cpu}, {os.cpu_count()} logical CPUs",
            f"load average at the start: {_load()} (compare within one run only)",
            f"flags: {' '.join(sys.argv[1:]) or '(defaults)'}",
        ]
    )


if __name__ == "__main__":
    main()
