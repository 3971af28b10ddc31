"""Pretrains BERT on one accelerator for a fixed wall budget (JAX backend).

    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/gpu_pretrain.py \
        --data=benchmarks/.gpu_data/pretrain.npz --model_dir=$OUT/bert_mini \
        [--config=pretrain/bert_mini.yaml --seconds=300 --batch_size=256 \
         --learning_rate=5e-4 --precision=mixed_bfloat16]

What runs where: `benchmarks/gpu_pretrain_data.py` (here, TensorFlow) packs
our data job's records into one `.npz`; this script (on the GPU machine,
which has JAX but no TensorFlow) trains our `BertBackbone` +
`BertPretrainer` (MLM + NSP) with the jitted JAX step of
`benchmarks/gpu_throughput.py` (`stateless_call`, `jax.value_and_grad`,
our AdamW from `model.optimization`, global-norm clipping) and writes a
`model_dir` that `python -m model.finetune --init_checkpoint=DIR` takes
exactly as it takes `model.pretrain`'s: `encoder.weights.h5`, `config.yaml`
(resolved, `configs.loader` format) and `vocab.txt`, plus
`metrics.jsonl` (`model.training` format) and `pretrain_summary.json`.

Budget: `--seconds` is the wall time from start to written weights. The
script loads the data, compiles, times `--probe_seconds` of steps, then
fixes the step count that fits in the rest (less a reserve for saving) and
BERT's schedule over it: linear warm-up for `--warmup_fraction` of the
steps, linear decay to 0 at the last. The rate is computed on the host
(`WarmupLinearDecay`) and fed to the step, so sizing the schedule after
timing needs no second compilation. SIGTERM (the wrapper's `timeout`)
stops the loop early and still saves.

Dynamic masking on the device: every time a sequence is drawn it gets a
fresh 15% selection (at most 20 per sequence; `[CLS]`, `[SEP]` and padding
never), 80% -> `[MASK]`, 10% -> a random ordinary (non-bracketed) token,
10% kept, as `model/masking.py` does in TensorFlow. Sequences are drawn
epoch by epoch in a fresh random order.
"""

import argparse
import dataclasses
import hashlib
import json
import lzma
import os
import signal
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from benchmarks.gpu_throughput import flops_per_sequence, peak_tflops  # noqa: E402
from configs import features  # noqa: E402
from configs.loader import (
    RESOLVED_CONFIG_FILE,
    config_to_dict,
    load_config,
)  # noqa: E402
from configs.metadata import check_compatible  # noqa: E402
from model.bert_backbone import ENCODER_WEIGHTS_FILE, BertBackbone  # noqa: E402
from model.bert_pretrainer import BertPretrainer, pretraining_losses  # noqa: E402
from model.optimization import WarmupLinearDecay, create_optimizer  # noqa: E402

METRIC_KEYS = ("loss", "mlm_loss", "sentence_loss", "mlm_accuracy", "sentence_accuracy")
INPUT_KEYS = (
    features.INPUT_IDS,
    features.INPUT_MASK,
    features.SEGMENT_IDS,
    features.MASKED_LM_POSITIONS,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="benchmarks/.gpu_data/pretrain.npz")
    p.add_argument("--model_dir", required=True)
    p.add_argument("--config", default="pretrain/bert_mini.yaml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="section.key=value"
    )
    p.add_argument("--seconds", type=float, default=300.0, help="wall budget, all in")
    p.add_argument("--reserve_seconds", type=float, default=15.0, help="for saving")
    p.add_argument("--probe_seconds", type=float, default=5.0)
    p.add_argument("--max_steps", type=int, default=0, help="cap (0 = budget only)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--warmup_fraction", type=float, default=0.06)
    p.add_argument("--precision", default="mixed_bfloat16")
    p.add_argument(
        "--steps_per_call", type=int, default=20, help="steps per jitted call (scan)"
    )
    p.add_argument("--log_seconds", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--summary_json", default="", help="also write the summary here")
    return p.parse_args(argv)


# === Data ===


def load_sequences(path):
    """Reads the `.npz` of `gpu_pretrain_data.py`.

    Returns `(ids, lengths, segment_a_lengths, nsp_labels, vocab_bytes,
    metadata)`: int32 `[N, max_seq_length]` original token ids (0-padded),
    int32 `[N]` arrays, the vocabulary file's bytes and its metadata dict.
    """
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    metadata = json.loads(str(arrays["metadata_json"]))
    flat = np.frombuffer(lzma.decompress(arrays["tokens_xz"].tobytes()), "<u2")
    lengths = arrays["lengths"].astype(np.int32)
    if flat.size != lengths.sum():
        raise ValueError(f"{path}: {flat.size} tokens, lengths say {lengths.sum()}")
    seq = int(metadata["max_seq_length"])
    ids = np.zeros((len(lengths), seq), np.int32)
    ids[np.arange(seq)[None] < lengths[:, None]] = flat
    return (
        ids,
        lengths,
        arrays["segment_a_lengths"].astype(np.int32),
        arrays["next_sentence_labels"].astype(np.int32),
        arrays["vocab"].tobytes(),
        metadata,
    )


def dynamic_mask(
    key,
    ids,
    lengths,
    *,
    ordinary_ids,
    special,
    max_predictions,
    masked_lm_prob=0.15,
    mask_token_prob=0.8,
    random_token_prob=0.1,
):
    """Fresh masked-LM choices for a batch, in JAX (traceable).

    Args:
        key: a `jax.random` key.
        ids: int32 `[b, s]` original token ids, 0-padded.
        lengths: int32 `[b]` real tokens per row.
        ordinary_ids: int32 `[k]` ids a random replacement is drawn from.
        special: dict of special token -> id (`configs.features` names).
        max_predictions: int, slots per row (`p`).
        masked_lm_prob, mask_token_prob, random_token_prob: float rates.

    Returns dict: `input_ids` int32 `[b, s]` (masked), `masked_lm_positions`
    and `masked_lm_ids` int32 `[b, p]` (0 in unused slots),
    `masked_lm_weights` float32 `[b, p]` (1 real / 0 unused). A row with
    `n` selectable tokens gets `min(p, max(1, round(n * masked_lm_prob)))`
    distinct positions, uniformly at random.
    """
    import jax
    import jax.numpy as jnp

    b, s = ids.shape
    k_select, k_how, k_random = jax.random.split(key, 3)
    position = jnp.arange(s)[None]
    selectable = (
        (position < lengths[:, None])
        & (ids != special[features.CLS])
        & (ids != special[features.SEP])
        & (ids != special[features.PAD])
    )
    count = jnp.clip(
        jnp.round(selectable.sum(1) * masked_lm_prob), 1, max_predictions
    ).astype(jnp.int32)
    # Random scores, unselectable ones below every selectable one: the
    # top-p indices are a uniform sample without replacement.
    scores = jnp.where(selectable, jax.random.uniform(k_select, (b, s)), -1.0)
    top, positions = jax.lax.top_k(scores, max_predictions)
    real = (jnp.arange(max_predictions)[None] < count[:, None]) & (top >= 0)
    positions = jnp.where(real, positions, 0).astype(jnp.int32)
    originals = jnp.take_along_axis(ids, positions, axis=1)
    draw = jax.random.uniform(k_how, (b, max_predictions))
    random_ids = ordinary_ids[
        jax.random.randint(k_random, (b, max_predictions), 0, ordinary_ids.shape[0])
    ]
    values = jnp.where(
        draw < mask_token_prob,
        special[features.MASK],
        jnp.where(draw < mask_token_prob + random_token_prob, random_ids, originals),
    )
    # Unused slots point at position 0 and write back its own id.
    values = jnp.where(real, values, originals)
    rows = jnp.arange(b)[:, None]
    return {
        features.INPUT_IDS: ids.at[rows, positions].set(values),
        features.MASKED_LM_POSITIONS: positions,
        features.MASKED_LM_IDS: jnp.where(real, originals, 0),
        features.MASKED_LM_WEIGHTS: real.astype(jnp.float32),
    }


class BatchOrder:
    """Row indices, epoch after epoch, each epoch a fresh permutation.

    `next(k, b)` returns int32 `[k, b]`; a batch may span two epochs.
    """

    def __init__(self, num_rows, seed):
        self.num_rows = num_rows
        self.rng = np.random.default_rng(seed)
        self.pending = np.zeros([0], np.int32)
        self.epochs = 0

    def next(self, k, b):
        while self.pending.size < k * b:
            order = self.rng.permutation(self.num_rows).astype(np.int32)
            self.pending = np.concatenate([self.pending, order])
            self.epochs += 1
        out, self.pending = self.pending[: k * b], self.pending[k * b :]
        return out.reshape(k, b)


# === Config and model_dir ===


def resolve_config(args, metadata, vocab_bytes):
    """Our `ExperimentConfig` for this run (what `config.yaml` records).

    Raises `ConfigError` if the records do not fit the model config or
    were not made with the vocabulary packed beside them.
    """
    overrides = [
        f"data.{name}={json.dumps(metadata[name])}"
        for name in (
            "max_seq_length",
            "max_predictions_per_seq",
            "masked_lm_prob",
            "dupe_factor",
            "sentence_task",
            "do_lower_case",
            "seed",
        )
    ]
    overrides += [
        'data.vocab_file="vocab.txt"',
        f"pretrain.batch_size={args.batch_size}",
        f"pretrain.learning_rate={args.learning_rate}",
        f"pretrain.precision={json.dumps(args.precision)}",
        'pretrain.masking="dynamic"',
        'pretrain.jit_compile="true"',
        f"pretrain.seed={args.seed}",
    ]
    cfg = load_config([args.config], overrides + list(args.overrides))
    check_compatible(
        metadata,
        kind="pretraining",
        max_seq_length=cfg.data.max_seq_length,
        max_predictions_per_seq=cfg.data.max_predictions_per_seq,
        vocabulary_size=cfg.model.vocabulary_size,
        max_sequence_length=cfg.model.max_sequence_length,
        vocab_sha256=hashlib.sha256(vocab_bytes).hexdigest(),
    )
    return cfg


def write_model_dir(model_dir, cfg, backbone, vocab_bytes):
    """`model.pretrain`'s final outputs: weights, resolved config, vocab."""
    os.makedirs(model_dir, exist_ok=True)
    backbone.save_weights(os.path.join(model_dir, ENCODER_WEIGHTS_FILE))
    with open(os.path.join(model_dir, RESOLVED_CONFIG_FILE), "w") as f:
        f.write(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    with open(os.path.join(model_dir, "vocab.txt"), "wb") as f:
        f.write(vocab_bytes)


# === Training ===


def host_rates(schedule, steps):
    """`schedule(steps)` as float32 numpy, computed on the host's CPU device.

    On the accelerator the tiny computation would queue behind the train
    call in flight and reading it back would wait for that call: the GPU
    would idle while the host prepares the next one.
    """
    import jax

    with jax.default_device(jax.devices("cpu")[0]):
        return np.asarray(schedule(steps), np.float32)


def make_train_call(pretrainer, optimizer, mask_fn):
    """A jitted `(state, data, key, rows [k, b], rates [k]) -> (state, metrics)`.

    Runs `k` optimizer steps in one `lax.scan` (fewer host round trips for a
    small model). `data` holds the device-resident arrays `ids` `[N, s]`,
    `lengths`, `segment_a_lengths`, `nsp` `[N]` and `ordinary` (ids random
    replacements come from); it is an argument, not a closure, so that XLA
    does not embed the corpus in the program as a constant. `mask_fn(key,
    ids, lengths, ordinary)` masks a batch. Metrics are means over the `k`
    steps, in `METRIC_KEYS` order.
    """
    import jax
    import jax.numpy as jnp

    rate_index = [v.name for v in optimizer.variables].index("learning_rate")

    def loss_fn(trainable, non_trainable, batch):
        outputs, non_trainable = pretrainer.stateless_call(
            trainable, non_trainable, {k: batch[k] for k in INPUT_KEYS}, training=True
        )
        losses = pretraining_losses(batch, outputs)
        return losses["loss"], (non_trainable, losses)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_call(state, data, key, rows, rates):
        def one_step(state, inputs):
            trainable, non_trainable, opt_vars = state
            rows, rate, step_key = inputs
            ids = data["ids"][rows]
            lengths = data["lengths"][rows]
            batch = mask_fn(step_key, ids, lengths, data["ordinary"])
            position = jnp.arange(ids.shape[1])[None]
            real = position < lengths[:, None]
            batch[features.INPUT_MASK] = real.astype(jnp.int32)
            batch[features.SEGMENT_IDS] = (
                (position >= data["segment_a_lengths"][rows][:, None]) & real
            ).astype(jnp.int32)
            batch[features.NEXT_SENTENCE_LABELS] = data["nsp"][rows]
            (_, (non_trainable, losses)), grads = grad_fn(
                trainable, non_trainable, batch
            )
            # The host's rate for this step replaces the constant one.
            opt_vars = list(opt_vars)
            opt_vars[rate_index] = jnp.asarray(rate, opt_vars[rate_index].dtype)
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            metrics = jnp.stack([losses[k] for k in METRIC_KEYS])
            return (trainable, non_trainable, opt_vars), metrics

        keys = jax.random.split(key, rows.shape[0])
        state, metrics = jax.lax.scan(one_step, state, (rows, rates, keys))
        return state, jnp.mean(metrics, axis=0)

    return jax.jit(train_call, donate_argnums=0)


def main(argv=None):
    start = time.time()
    args = parse_args(argv)
    stop = {"signal": None}

    def on_term(signum, _frame):
        # `timeout` sends SIGTERM: finish the current call, then save.
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_term)

    import jax
    import jax.numpy as jnp

    ids, lengths, a_lengths, nsp, vocab_bytes, metadata = load_sequences(args.data)
    cfg = resolve_config(args, metadata, vocab_bytes)
    vocab = vocab_bytes.decode("utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    special = features.special_token_ids(vocab)
    ordinary = np.array(
        [i for i, t in enumerate(vocab) if not features.is_special_token(t)], np.int32
    )
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, keras "
        f"{keras.__version__}; {len(ids)} sequences (dupe_factor "
        f"{metadata['dupe_factor']}), model {args.config}: L{cfg.model.num_layers} "
        f"H{cfg.model.hidden_dim} A{cfg.model.num_heads}, batch {args.batch_size}, "
        f"{args.precision}; loaded in {time.time() - start:.1f} s",
        flush=True,
    )

    keras.utils.set_random_seed(args.seed)
    backbone = BertBackbone.from_model_config(cfg.model, dtype=args.precision)
    pretrainer = BertPretrainer(backbone)
    p = cfg.pretrain
    optimizer = create_optimizer(
        learning_rate=args.learning_rate,
        total_steps=None,  # the rate is fed per step (module docstring)
        weight_decay=p.weight_decay,
        optimizer=p.optimizer,
        beta_1=p.beta_1,
        beta_2=p.beta_2,
        epsilon=p.epsilon,
        global_clipnorm=p.clipnorm,
    )
    optimizer.build(pretrainer.trainable_variables)

    d = cfg.data

    def mask_fn(key, batch_ids, batch_lengths, ordinary_ids):
        return dynamic_mask(
            key,
            batch_ids,
            batch_lengths,
            ordinary_ids=ordinary_ids,
            special=special,
            max_predictions=d.max_predictions_per_seq,
            masked_lm_prob=d.masked_lm_prob,
            mask_token_prob=d.mask_token_prob,
            random_token_prob=d.random_token_prob,
        )

    data = {
        "ids": jnp.asarray(ids),
        "lengths": jnp.asarray(lengths),
        "segment_a_lengths": jnp.asarray(a_lengths),
        "nsp": jnp.asarray(nsp),
        "ordinary": jnp.asarray(ordinary),
    }
    train_call = make_train_call(pretrainer, optimizer, mask_fn)
    state = (
        [v.value for v in pretrainer.trainable_variables],
        [v.value for v in pretrainer.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    order = BatchOrder(len(ids), args.seed)
    key = jax.random.key(args.seed)
    k, b = args.steps_per_call, args.batch_size

    # Until the step count is known: a long provisional warm-up (small rates).
    schedule = WarmupLinearDecay(args.learning_rate, 10**9, 10**5)

    def run_call(step):
        nonlocal state, key
        key, call_key = jax.random.split(key)
        rates = host_rates(schedule, np.arange(step, step + k))
        state, metrics = train_call(state, data, call_key, order.next(k, b), rates)
        return metrics

    # === Compile ===
    t0 = time.time()
    metrics = run_call(0)
    first = jax.device_get(metrics)
    compile_s = time.time() - t0
    step = k
    print(f"compiled in {compile_s:.1f} s; first loss {first[0]:.3f}", flush=True)

    # === Probe: time steps, then fix the schedule ===
    deadline = start + args.seconds - args.reserve_seconds
    t0, probe_steps = time.time(), 0
    while time.time() - t0 < args.probe_seconds and not stop["signal"]:
        metrics = run_call(step)
        jax.block_until_ready(metrics)
        step += k
        probe_steps += k
    steps_per_s = probe_steps / max(time.time() - t0, 1e-9)
    fit = int(steps_per_s * max(deadline - time.time(), 0) * 0.97)
    total_steps = step + fit // k * k
    if args.max_steps:
        total_steps = min(total_steps, max(args.max_steps, step))
    warmup_steps = max(step, int(args.warmup_fraction * total_steps))
    schedule = WarmupLinearDecay(args.learning_rate, total_steps, warmup_steps)
    print(
        f"probe: {steps_per_s:.1f} steps/s ({steps_per_s * b:.0f} seq/s); "
        f"schedule: {total_steps} steps, warm-up {warmup_steps}, peak "
        f"{args.learning_rate:g}",
        flush=True,
    )

    # === Loop: one call in flight while the host prepares the next ===
    os.makedirs(args.model_dir, exist_ok=True)
    log_path = os.path.join(args.model_dir, "metrics.jsonl")
    open(log_path, "w").close()  # a fresh log per run
    log, last_log, window = [], time.time(), (time.time(), step)
    pending = metrics
    while step < total_steps and time.time() < deadline and not stop["signal"]:
        metrics = run_call(step)
        step += k
        values = jax.device_get(pending)  # the previous call: GPU stays busy
        pending = metrics
        now = time.time()
        if now - last_log >= args.log_seconds or step >= total_steps:
            rate = (step - k - window[1]) * b / max(now - window[0], 1e-9)
            record = {"step": step - k, **dict(zip(METRIC_KEYS, map(float, values)))}
            record["learning_rate"] = float(host_rates(schedule, step - k))
            record["examples_per_second"] = rate
            record["elapsed_s"] = round(now - start, 1)
            log.append(record)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"step {record['step']}/{total_steps} loss {record['loss']:.3f} "
                f"mlm_acc {record['mlm_accuracy']:.3f} nsp_acc "
                f"{record['sentence_accuracy']:.3f} lr {record['learning_rate']:.2e} "
                f"{rate:.0f} seq/s",
                flush=True,
            )
            last_log, window = now, (now, step - k)
    last = jax.device_get(pending)
    train_s = time.time() - start

    # === Save: model.pretrain's model_dir ===
    trainable, non_trainable, _ = state
    for variable, value in zip(pretrainer.trainable_variables, trainable):
        variable.assign(value)
    for variable, value in zip(pretrainer.non_trainable_variables, non_trainable):
        variable.assign(value)
    cfg = cfg.replace(
        pretrain=dataclasses.replace(
            cfg.pretrain, steps=step, warmup_steps=warmup_steps
        )
    )
    write_model_dir(args.model_dir, cfg, backbone, vocab_bytes)
    m = cfg.model
    flops = flops_per_sequence(
        m.num_layers,
        m.hidden_dim,
        m.intermediate_dim,
        m.vocabulary_size,
        d.max_seq_length,
        d.max_predictions_per_seq,
    )
    peak, device = peak_tflops(0.0)
    seq_per_s = steps_per_s * b
    summary = {
        "device": device,
        "config": args.config,
        "params": sum(int(np.prod(v.shape)) for v in pretrainer.trainable_variables),
        "precision": args.precision,
        "batch_size": b,
        "steps": step,
        "planned_steps": total_steps,
        "warmup_steps": warmup_steps,
        "peak_learning_rate": args.learning_rate,
        "sequences_seen": step * b,
        "epochs": round(step * b / len(ids), 2),
        "num_sequences": len(ids),
        "dupe_factor": metadata["dupe_factor"],
        "stopped_by_signal": stop["signal"] is not None,
        "compile_s": round(compile_s, 1),
        "seq_per_s_probe": round(seq_per_s, 1),
        "mfu_probe": round(seq_per_s * flops / 1e12 / peak, 4) if peak else None,
        "wall_s_to_last_step": round(train_s, 1),
        "wall_s_total": round(time.time() - start, 1),
        "first": dict(zip(METRIC_KEYS, map(float, first))),
        "last": dict(zip(METRIC_KEYS, map(float, last))),
        "model_dir": args.model_dir,
    }
    with open(os.path.join(args.model_dir, "pretrain_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2), flush=True)
    return summary


if __name__ == "__main__":
    main()
