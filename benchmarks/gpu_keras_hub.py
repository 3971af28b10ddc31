"""Peer baseline for the GPU run: keras-hub's `BertMaskedLM`, JAX backend.

    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/gpu_keras_hub.py \
        [--config=pretrain/bert_base.yaml --batch_size=256 --seq=128 \
         --precision=mixed_bfloat16 --json=FILE]

keras-hub's BERT built from scratch at the product's size (the model
section of `--config`, `configs/pretrain/*.yaml`), trained by a plain
jitted JAX step (`stateless_call`, `jax.value_and_grad`, Keras AdamW,
global-norm clipping 1.0, donated state) on synthetic batches already on
the device: what a keras-hub user writes. Our side is not here: it is the
product command (`python -m model.pretrain`, see `gpu_run.sh`), read by
`benchmarks/mfu.py`. keras-hub has no NSP/SOP head, so its step does the
masked-LM loss only, which slightly favours it. FLOPs and MFU use
`mfu.flops_per_sequence`.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.mfu import flops_per_sequence, peak_tflops  # noqa: E402
from configs.loader import load_config  # noqa: E402


def synthetic_batch(rng, batch, seq, predictions, vocab):
    ids = rng.randint(5, vocab, size=(batch, seq)).astype("int32")
    ids[:, 0] = 2
    positions = np.sort(
        np.argsort(rng.rand(batch, seq - 1), axis=1)[:, :predictions] + 1, axis=1
    ).astype("int32")
    return {
        "token_ids": ids,
        "padding_mask": np.ones_like(ids),
        "segment_ids": (np.arange(seq)[None] >= seq // 2).astype("int32")
        * np.ones_like(ids),
        "mask_positions": positions,
        "mask_ids": np.take_along_axis(ids, positions, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="pretrain/bert_base.yaml")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window_steps", type=int, default=10)
    parser.add_argument("--peak_tflops", type=float, default=0.0)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)

    import jax
    import keras
    import keras_hub

    m = load_config([args.config], []).model
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=m.vocabulary_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        hidden_dim=m.hidden_dim,
        intermediate_dim=m.intermediate_dim,
        max_sequence_length=max(m.max_sequence_length, args.seq),
        dropout=m.dropout,
        dtype=args.precision,
    )
    model = keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)
    optimizer = keras.optimizers.AdamW(
        1e-4, weight_decay=0.01, epsilon=1e-6, global_clipnorm=1.0
    )
    optimizer.build(model.trainable_variables)

    def loss_fn(trainable, non_trainable, batch):
        inputs = {k: batch[k] for k in batch if k != "mask_ids"}
        logits, non_trainable = model.stateless_call(
            trainable, non_trainable, inputs, training=True
        )
        per_token = keras.losses.sparse_categorical_crossentropy(
            batch["mask_ids"], keras.ops.cast(logits, "float32"), from_logits=True
        )
        return keras.ops.mean(per_token), non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, batch):
        trainable, non_trainable, opt_vars = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, batch)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return (trainable, non_trainable, opt_vars), loss

    step = jax.jit(train_step, donate_argnums=0)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    rng = np.random.RandomState(0)
    batches = [
        jax.device_put(
            synthetic_batch(
                rng, args.batch_size, args.seq, args.predictions, m.vocabulary_size
            )
        )
        for _ in range(4)
    ]
    t0 = time.time()
    state, loss = step(state, batches[0])
    jax.block_until_ready(loss)
    compile_s = time.time() - t0
    rates, n = [], 1
    for _ in range(args.windows):
        t0 = time.time()
        for _ in range(args.window_steps):
            state, loss = step(state, batches[n % len(batches)])
            n += 1
        jax.block_until_ready(loss)
        rates.append(args.window_steps * args.batch_size / (time.time() - t0))
    flops = flops_per_sequence(
        m.num_layers,
        m.hidden_dim,
        m.intermediate_dim,
        m.vocabulary_size,
        args.seq,
        args.predictions,
    )
    seq_per_s = statistics.median(rates[1:] or rates)
    peak, device = peak_tflops(args.peak_tflops)
    result = {
        "model": "keras_hub.BertMaskedLM",
        "keras_hub": keras_hub.__version__,
        "device": device,
        "config": args.config,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "seq": args.seq,
        "compile_s": round(compile_s, 1),
        "last_loss": round(float(loss), 4),
        "seq_per_s_windows": [round(r, 1) for r in rates],
        "seq_per_s": round(seq_per_s, 1),
        "achieved_tflops": round(seq_per_s * flops / 1e12, 1),
        "peak_tflops": peak,
        "mfu": round(seq_per_s * flops / 1e12 / peak, 4) if peak else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
