"""`pretrain.precision: auto` on a CPU with bf16 instructions: a timed probe.

Whether bfloat16 pays on a CPU depends on the chip (AMX tiles, or AVX-512
BF16 dot products alone), on the model's shape (at small widths the casts
and elementwise work bf16 adds weigh against faster matmuls) and on
TensorFlow's oneDNN build, so no fixed rule is right everywhere. Measured
with `benchmarks/train_throughput.py` on a 2-core AMX Xeon, BERT-tiny,
batch 32, seq 128: bf16 178 seq/s, float32 129, float32 + whole-step XLA 97.

The first run of a shape on a machine therefore times the product's own
training step (the pretrainer's forward pass, the loss and its gradients,
on a synthetic batch of the run's shape) a few times in each precision,
alternating, takes the faster (bf16 must win by 5%: float32 is the safer
numerics) and caches the answer per CPU model, TensorFlow version and
shape in `~/.cache/bert-sentiment/precision_probe.json` (or
`$BERT_SENTIMENT_CACHE`), so later runs start at once and choose the same.
`BERT_SENTIMENT_PRECISION_PROBE=off` skips the probe (the static rule of
`training.choose_fast_path`: bf16 on CPUs with bf16 instructions).
"""

import gc
import json
import os
import time

from configs import features, fileio

PROBE_ENV = "BERT_SENTIMENT_PRECISION_PROBE"
CACHE_ENV = "BERT_SENTIMENT_CACHE"
CACHE_FILE = "precision_probe.json"
CANDIDATES = ("mixed_bfloat16", "float32")
BF16_MARGIN = 0.95  # bf16 is chosen when its step takes <= 95% of float32's
ROUNDS = 3  # alternating timed rounds per precision; the fastest counts
CALLS_PER_ROUND = 2


def enabled() -> bool:
    return os.environ.get(PROBE_ENV, "on").lower() not in ("0", "off", "false")


def cache_path() -> str:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "bert-sentiment",
    )
    return os.path.join(root, CACHE_FILE)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def cache_key(cfg, per_replica_batch: int) -> str:
    """CPU model, TensorFlow version and everything that shapes the step."""
    import tensorflow as tf

    m, p, d = cfg.model, cfg.pretrain, cfg.data
    dropout = p.dropout if p.dropout >= 0 else m.dropout
    return (
        f"{_cpu_model()} | tf {tf.__version__} | L{m.num_layers} H{m.hidden_dim} "
        f"A{m.num_heads} I{m.intermediate_dim} V{m.vocabulary_size} "
        f"{m.activation} | batch {per_replica_batch} seq {d.max_seq_length} "
        f"pred {p.max_predictions_per_seq or d.max_predictions_per_seq} | "
        f"sentence {p.sentence_loss_weight > 0} dropout {dropout > 0}"
    )


def _read_cache(path):
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        return cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        return {}


def choose(cfg, per_replica_batch: int) -> tuple[str, str]:
    """Returns (dtype policy name, one line saying how it was chosen)."""
    key = cache_key(cfg, per_replica_batch)
    path = cache_path()
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("precision") in CANDIDATES:
        return entry["precision"], (
            f"precision auto: {entry['precision']} (probed earlier on this "
            f"machine: {_timings(entry)}; cached in {path})"
        )
    seconds = time_steps(cfg, per_replica_batch)
    bf16, f32 = seconds["mixed_bfloat16"], seconds["float32"]
    precision = "mixed_bfloat16" if bf16 <= BF16_MARGIN * f32 else "float32"
    entry = {"precision": precision, "seconds_per_step": seconds}
    note = f"precision auto: {precision} (timed probe: {_timings(entry)}"
    try:
        cached = _read_cache(path)
        cached[key] = entry
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fileio.write_atomic(path, json.dumps(cached, indent=2, sort_keys=True))
        note += f"; cached in {path})"
    except OSError as e:  # a read-only home: probe again next time
        note += f"; not cached: {e.strerror or e})"
    return precision, note


def _timings(entry) -> str:
    s = entry.get("seconds_per_step") or {}
    return ", ".join(f"{k} {1000 * v:.0f} ms/step" for k, v in sorted(s.items()))


def time_steps(cfg, per_replica_batch: int) -> dict:
    """Seconds per training step (forward, loss, gradients) per precision.

    Each precision's model is built and its step traced first; then
    `ROUNDS` rounds alternate between them (so a machine that speeds up or
    slows down mid-probe hurts both alike), `CALLS_PER_ROUND` calls each;
    the fastest round counts. Returns {policy name: seconds per step}.
    """
    import numpy as np
    import tensorflow as tf

    from model.bert_pretrainer import (
        INPUT_KEYS,
        combine_loss_terms,
        pretraining_loss_terms,
    )
    from model.pretrain_steps import build

    p, d = cfg.pretrain, cfg.data
    seq = d.max_seq_length
    preds = p.max_predictions_per_seq or d.max_predictions_per_seq
    rng = np.random.default_rng(0)
    b = per_replica_batch
    positions = np.sort(
        np.stack(
            [rng.choice(np.arange(1, seq), preds, replace=False) for _ in range(b)]
        ),
        axis=1,
    )
    vocab = cfg.model.vocabulary_size
    batch = {
        features.INPUT_IDS: rng.integers(0, vocab, (b, seq)),
        features.INPUT_MASK: np.ones((b, seq)),
        features.SEGMENT_IDS: (np.arange(seq)[None, :] >= seq // 2).repeat(b, 0),
        features.MASKED_LM_POSITIONS: positions,
        features.MASKED_LM_IDS: rng.integers(0, vocab, (b, preds)),
        features.MASKED_LM_WEIGHTS: np.ones((b, preds)),
        features.NEXT_SENTENCE_LABELS: rng.integers(0, 2, (b, 1)),
    }
    batch = {
        k: tf.constant(
            v.astype(np.float32 if k == features.MASKED_LM_WEIGHTS else np.int32)
        )
        for k, v in batch.items()
    }
    steps = {}
    for precision in CANDIDATES:
        _, pretrainer, _ = build(cfg, precision)
        steps[precision] = _step_fn(
            pretrainer, INPUT_KEYS, pretraining_loss_terms, combine_loss_terms, p, b
        )
        steps[precision](batch).numpy()  # trace, and oneDNN's first-call setup
    best = {precision: float("inf") for precision in CANDIDATES}
    for _ in range(ROUNDS):
        for precision in CANDIDATES:
            began = time.perf_counter()
            for _ in range(CALLS_PER_ROUND):
                out = steps[precision](batch)
            out.numpy()
            elapsed = (time.perf_counter() - began) / CALLS_PER_ROUND
            best[precision] = min(best[precision], elapsed)
    # The run's own model comes next: free the probe's. (Its weight paths
    # are the same as without a probe; only Keras' auto-numbered model
    # names move on, `bert_backbone_2`, which nothing reads.)
    del steps
    gc.collect()
    return best


def _step_fn(pretrainer, input_keys, loss_terms, combine, p, batch_size):
    import tensorflow as tf

    variables = pretrainer.trainable_variables

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            outputs = pretrainer({k: batch[k] for k in input_keys}, training=True)
            sums = {k: tf.reduce_sum(v) for k, v in loss_terms(batch, outputs).items()}
            loss = combine(
                sums, sums["mlm_weight"], batch_size, p.sentence_loss_weight
            )["loss"]
        grads = [g for g in tape.gradient(loss, variables) if g is not None]
        # One scalar that depends on every gradient: all of them are computed.
        return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])

    return step
