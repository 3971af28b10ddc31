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

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import keras_hub  # noqa: E402

from benchmarks.gpu_throughput import (  # noqa: E402
    benchmark,
    build_backbone,
    encoder_only_loss,
    parse_args,
)


def main():
    args = parse_args(__doc__.split("\n")[0])
    keras.utils.set_random_seed(0)
    backbone = build_backbone(keras_hub.models.BertBackbone, args)
    model = (
        backbone
        if args.backbone_only
        else keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)
    )

    def loss_fn(trainable, non_trainable, batch):
        inputs = {
            "token_ids": batch["input_ids"],
            "segment_ids": batch["segment_ids"],
            "padding_mask": batch["input_mask"],
        }
        if args.backbone_only:
            outputs, non_trainable = model.stateless_call(
                trainable, non_trainable, inputs, training=True
            )
            return encoder_only_loss(outputs), non_trainable
        inputs["mask_positions"] = batch["masked_lm_positions"]
        logits, non_trainable = model.stateless_call(
            trainable, non_trainable, inputs, training=True
        )
        per_token = keras.losses.sparse_categorical_crossentropy(
            batch["masked_lm_ids"], keras.ops.cast(logits, "float32"), from_logits=True
        )
        weights = batch["masked_lm_weights"]
        loss = keras.ops.sum(per_token * weights) / keras.ops.sum(weights)
        return loss, non_trainable

    return benchmark(
        model,
        loss_fn,
        args,
        model=(
            "keras_hub.BertBackbone" if args.backbone_only else "keras_hub.BertMaskedLM"
        ),
        keras_hub=keras_hub.__version__,
    )


if __name__ == "__main__":
    main()
