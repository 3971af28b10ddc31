"""BERT pretraining throughput and MFU on one accelerator, JAX backend.

    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/gpu_throughput.py \
        [--size=base --batch_size=256 --seq=128 --precision=mixed_bfloat16]

Runs our `BertBackbone` + `BertPretrainer` (the same Keras 3 classes that
`model.pretrain` trains under TensorFlow) with a jitted JAX train step:
`stateless_call` forward, `jax.value_and_grad`, the project's AdamW with
BERT's schedule (`model.optimization`) and global-norm clipping 1.0, on
synthetic batches (random ids, 20 masked positions, NSP labels). Imports
only keras, numpy and jax from our code path: no TensorFlow needed.

Reports sequences/s (median over timing windows, each ended by
`block_until_ready`) and model FLOPs utilisation:
  FLOPs/sequence = L * (6 * seq * (4 H^2 + 2 H I) + 12 * seq^2 * H)
                 + 6 * P * (H^2 + H V) + 6 * H^2
(dense matmuls: 2 FLOPs per MAC, x3 for forward + backward; attention
scores and context; the MLM head only at the P masked positions; the
pooler), divided by the chip's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s,
override with --peak_tflops).
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from model.bert_backbone import BertBackbone  # noqa: E402
from model.bert_pretrainer import BertPretrainer, pretraining_losses  # noqa: E402
from model.optimization import create_optimizer  # noqa: E402

SIZES = {
    "tiny": (2, 2, 128, 512),
    "mini": (4, 4, 256, 1024),
    "small": (4, 8, 512, 2048),
    "medium": (8, 8, 512, 2048),
    "base": (12, 12, 768, 3072),
    "large": (24, 16, 1024, 4096),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def flops_per_sequence(num_layers, hidden, intermediate, vocab, seq, predictions):
    """Training FLOPs (forward + backward) for one sequence; see module doc."""
    encoder = num_layers * (
        6 * seq * (4 * hidden**2 + 2 * hidden * intermediate) + 12 * seq**2 * hidden
    )
    mlm = 6 * predictions * (hidden**2 + hidden * vocab)
    return encoder + mlm + 6 * hidden**2


def synthetic_batch(rng, batch, seq, predictions, vocab):
    ids = rng.randint(5, vocab, size=(batch, seq)).astype("int32")
    ids[:, 0] = 2
    positions = np.sort(
        np.argsort(rng.rand(batch, seq - 1), axis=1)[:, :predictions] + 1, axis=1
    ).astype("int32")
    return {
        "input_ids": ids,
        "input_mask": np.ones_like(ids),
        "segment_ids": (np.arange(seq)[None] >= seq // 2).astype("int32")
        * np.ones_like(ids),
        "masked_lm_positions": positions,
        "masked_lm_ids": np.take_along_axis(ids, positions, 1),
        "masked_lm_weights": np.ones((batch, predictions), "float32"),
        "next_sentence_labels": rng.randint(0, 2, size=(batch, 1)).astype("int32"),
    }


def peak_tflops(override):
    if override:
        return override, "given"
    import jax

    kind = jax.devices()[0].device_kind
    for name, value in PEAK_TFLOPS.items():
        if name in kind:
            return value, kind
    return None, kind


def time_jitted_step(train_step, state, batches, windows, window_steps, batch_size):
    """Times a jitted `train_step(state, batch) -> (state, aux)`.

    The first call (tracing + compilation) is timed on its own; then
    `windows` windows of `window_steps` steps, each ended by
    `block_until_ready` so that asynchronous dispatch is not mistaken for
    speed. Returns `(compile_s, first_aux, last_aux, seq_per_s per window,
    steps run)`.
    """
    import jax

    t0 = time.time()
    state, first = train_step(state, batches[0])
    jax.block_until_ready(first)
    compile_s = time.time() - t0
    rates, step, last = [], 1, first
    for _ in range(windows):
        t0 = time.time()
        for _ in range(window_steps):
            state, last = train_step(state, batches[step % len(batches)])
            step += 1
        jax.block_until_ready(last)
        rates.append(window_steps * batch_size / (time.time() - t0))
    return compile_s, first, last, rates, step


def parse_args(description):
    """The flags both GPU scripts share (sizes, precision, timing windows)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", default="base", choices=sorted(SIZES))
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument(
        "--backbone_only",
        action="store_true",
        help="ablation: train the encoder alone (loss = mean square of "
        "sequence_output), to separate encoder from head cost",
    )
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window_steps", type=int, default=10)
    parser.add_argument("--peak_tflops", type=float, default=0.0)
    parser.add_argument("--json", default="", help="also write results here")
    return parser.parse_args()


def build_backbone(backbone_class, args):
    """`backbone_class` (ours or keras-hub's; same arguments) at `--size`."""
    layers, heads, hidden, intermediate = SIZES[args.size]
    return backbone_class(
        vocabulary_size=args.vocab,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        max_sequence_length=max(512, args.seq),
        dropout=args.dropout,
        dtype=args.precision,
    )


def encoder_only_loss(outputs):
    """The `--backbone_only` ablation's loss: mean square of the encoder."""
    sequence = keras.ops.cast(outputs["sequence_output"], "float32")
    return keras.ops.mean(keras.ops.square(sequence))


def benchmark(keras_model, loss_fn, args, **extra):
    """Times `model` trained by one jitted JAX step; prints and returns JSON.

    Args:
        keras_model: a built Keras model.
        loss_fn: `(trainable, non_trainable, batch) -> (loss, non_trainable)`
            around `keras_model.stateless_call`.
        args: the flags of `parse_args`.
        extra: more keys for the result (which model, versions).

    The step is the same for every model: `jax.value_and_grad`, our AdamW
    with BERT's schedule and global-norm clipping 1.0, donated state,
    synthetic batches already on the device.
    """
    import jax

    optimizer = create_optimizer(
        learning_rate=1e-4, total_steps=10_000, warmup_steps=100, global_clipnorm=1.0
    )
    optimizer.build(keras_model.trainable_variables)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, batch):
        trainable, non_trainable, opt_vars = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, batch)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return (trainable, non_trainable, opt_vars), loss

    state = (
        [v.value for v in keras_model.trainable_variables],
        [v.value for v in keras_model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    rng = np.random.RandomState(0)
    batches = [
        jax.device_put(
            synthetic_batch(
                rng, args.batch_size, args.seq, args.predictions, args.vocab
            )
        )
        for _ in range(4)
    ]
    compile_s, first_loss, last_loss, rates, _ = time_jitted_step(
        jax.jit(train_step, donate_argnums=0),
        state,
        batches,
        args.windows,
        args.window_steps,
        args.batch_size,
    )
    seq_per_s = statistics.median(rates)
    layers, _, hidden, intermediate = SIZES[args.size]
    flops = flops_per_sequence(
        layers, hidden, intermediate, args.vocab, args.seq, args.predictions
    )
    peak, device = peak_tflops(args.peak_tflops)
    result = {
        **extra,
        "device": device,
        "size": args.size,
        "params": sum(int(np.prod(v.shape)) for v in keras_model.trainable_variables),
        "batch_size": args.batch_size,
        "seq": args.seq,
        "precision": args.precision,
        "dropout": args.dropout,
        "backbone_only": args.backbone_only,
        "compile_s": round(compile_s, 1),
        "first_loss": round(float(first_loss), 4),
        "last_loss": round(float(last_loss), 4),
        "seq_per_s_windows": [round(r, 1) for r in rates],
        "seq_per_s": round(seq_per_s, 1),
        "tokens_per_s": round(seq_per_s * args.seq),
        "tflops_per_sequence": flops / 1e12,
        "achieved_tflops": round(seq_per_s * flops / 1e12, 1),
        "peak_tflops": peak,
        "mfu": round(seq_per_s * flops / 1e12 / peak, 4) if peak else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def main():
    args = parse_args(__doc__.split("\n")[0])
    backend = keras.backend.backend()
    if backend != "jax":
        print(f"note: KERAS_BACKEND={backend}; the jitted JAX step needs jax")
        return run_other_backend(args)

    keras.utils.set_random_seed(0)
    backbone = build_backbone(BertBackbone, args)
    model = backbone if args.backbone_only else BertPretrainer(backbone)
    input_keys = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions")
    if args.backbone_only:
        input_keys = input_keys[:3]

    def loss_fn(trainable, non_trainable, batch):
        outputs, non_trainable = model.stateless_call(
            trainable, non_trainable, {k: batch[k] for k in input_keys}, training=True
        )
        if args.backbone_only:
            return encoder_only_loss(outputs), non_trainable
        return pretraining_losses(batch, outputs)["loss"], non_trainable

    name = "ours.BertBackbone" if args.backbone_only else "ours.BertPretrainer"
    return benchmark(model, loss_fn, args, model=name)


def run_other_backend(args):
    """Forward+backward smoke run for non-JAX backends (proves the classes
    and the loss run; no throughput claim)."""
    model = BertPretrainer(build_backbone(BertBackbone, args))
    batch = synthetic_batch(
        np.random.RandomState(0),
        args.batch_size,
        args.seq,
        args.predictions,
        args.vocab,
    )
    outputs = model({k: batch[k] for k in model.input})
    loss = float(pretraining_losses(batch, outputs)["loss"])
    print(json.dumps({"backend": keras.backend.backend(), "loss": loss}))
    return loss


if __name__ == "__main__":
    main()
