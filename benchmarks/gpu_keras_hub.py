"""Baseline for `gpu_throughput.py`: keras-hub's `BertMaskedLM`, same step.

    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/gpu_keras_hub.py \
        [--size=base --batch_size=256 --seq=128 --precision=mixed_bfloat16]

keras-hub's BERT built from scratch at the same size, trained by the same
jitted JAX step as ours (`stateless_call`, `jax.value_and_grad`, our AdamW
with BERT's schedule and clipping, synthetic batches), so the ratio between
the two scripts' seq/s compares the models, not the loops. keras-hub has no
NSP/SOP head: its step does the masked-LM loss only, which slightly favours
it. FLOPs and MFU use the same formula as `gpu_throughput.py`.
"""

import json
import os
import statistics
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.gpu_throughput import (  # noqa: E402
    SIZES,
    flops_per_sequence,
    parse_args,
    peak_tflops,
    synthetic_batch,
    time_jitted_step,
)
from model.optimization import create_optimizer  # noqa: E402


def main():
    import jax

    args = parse_args(__doc__.split("\n")[0])

    layers, heads, hidden, intermediate = SIZES[args.size]
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=args.vocab,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=intermediate,
        max_sequence_length=max(512, args.seq),
        dropout=args.dropout,
        dtype=args.precision,
    )
    model = (
        backbone
        if args.backbone_only
        else keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)
    )
    optimizer = create_optimizer(
        learning_rate=1e-4, total_steps=10_000, warmup_steps=100, global_clipnorm=1.0
    )
    optimizer.build(model.trainable_variables)

    def loss_fn(trainable, non_trainable, batch):
        inputs = {
            "token_ids": batch["input_ids"],
            "segment_ids": batch["segment_ids"],
            "padding_mask": batch["input_mask"],
            "mask_positions": batch["masked_lm_positions"],
        }
        if args.backbone_only:
            inputs.pop("mask_positions")
            outputs, non_trainable = model.stateless_call(
                trainable, non_trainable, inputs, training=True
            )
            sequence = keras.ops.cast(outputs["sequence_output"], "float32")
            return keras.ops.mean(keras.ops.square(sequence)), non_trainable
        logits, non_trainable = model.stateless_call(
            trainable, non_trainable, inputs, training=True
        )
        per_token = keras.losses.sparse_categorical_crossentropy(
            batch["masked_lm_ids"], keras.ops.cast(logits, "float32"), from_logits=True
        )
        weights = batch["masked_lm_weights"]
        loss = keras.ops.sum(per_token * weights) / keras.ops.sum(weights)
        return loss, non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, batch):
        trainable, non_trainable, opt_vars = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, batch)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return (trainable, non_trainable, opt_vars), loss

    train_step = jax.jit(train_step, donate_argnums=0)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
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
    compile_s, _, loss, rates, _ = time_jitted_step(
        train_step, state, batches, args.windows, args.window_steps, args.batch_size
    )
    seq_per_s = statistics.median(rates)
    flops = flops_per_sequence(
        layers, hidden, intermediate, args.vocab, args.seq, args.predictions
    )
    peak, device = peak_tflops(args.peak_tflops)
    result = {
        "model": "keras_hub.BertMaskedLM",
        "keras_hub": keras_hub.__version__,
        "device": device,
        "size": args.size,
        "batch_size": args.batch_size,
        "seq": args.seq,
        "precision": args.precision,
        "dropout": args.dropout,
        "backbone_only": args.backbone_only,
        "compile_s": round(compile_s, 1),
        "last_loss": round(float(loss), 4),
        "seq_per_s_windows": [round(r, 1) for r in rates],
        "seq_per_s": round(seq_per_s, 1),
        "achieved_tflops": round(seq_per_s * flops / 1e12, 1),
        "mfu": round(seq_per_s * flops / 1e12 / peak, 4) if peak else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
