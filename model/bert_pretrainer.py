"""BERT pretraining task: backbone + masked-LM head + NSP/SOP head.

TF-free (keras.ops only): the same model and loss run under
`KERAS_BACKEND=jax` for the GPU benchmark.
"""

import keras
from keras import ops

from configs import features
from model import fused_ops
from model.bert_backbone import bert_kernel_initializer, get_activation
from model.heads import MaskedLMHead, SentencePredictionHead

MLM_LOGITS = "mlm_logits"
SENTENCE_LOGITS = "sentence_logits"
# The pretrainer's inputs, and the metrics every training loop reports.
INPUT_KEYS = (
    features.INPUT_IDS,
    features.INPUT_MASK,
    features.SEGMENT_IDS,
    features.MASKED_LM_POSITIONS,
)
METRIC_KEYS = (
    "loss",
    "mlm_loss",
    "sentence_loss",
    "mlm_accuracy",
    "sentence_accuracy",
)


@keras.saving.register_keras_serializable(package="bert")
class BertPretrainer(keras.Model):
    """Masked-LM and sentence-pair (NSP or SOP) pretraining of a backbone.

    Inputs: the backbone's dict plus `"masked_lm_positions"` (int32
    `[batch, num_predictions]`). Outputs: `"mlm_logits"` float32
    `[batch, num_predictions, vocabulary_size]` (only at the masked
    positions) and `"sentence_logits"` float32 `[batch, 2]`. The MLM output
    weights are the backbone's `token_embedding` table (tied). Losses and
    metrics come from `pretraining_loss_terms` / `combine_loss_terms`.

    Args:
        backbone: a `BertBackbone` instance (composition: never rebuilt).
        num_sentence_classes: int. Classes of the sentence head (2).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    ```python
    pretrainer = BertPretrainer(backbone)
    out = pretrainer({**backbone_inputs, "masked_lm_positions": positions})
    ```

    References:
     - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
     - keras-hub `keras_hub/src/models/bert/bert_masked_lm.py`
    """

    def __init__(self, backbone, num_sentence_classes=2, **kwargs):
        # === Layers ===
        self.backbone = backbone
        init = bert_kernel_initializer(backbone.initializer_range)
        self.mlm_head = MaskedLMHead(
            vocabulary_size=backbone.vocabulary_size,
            token_embedding=backbone.token_embedding,
            # As BERT's MLM transform: the encoder's activation and epsilon.
            activation=get_activation(getattr(backbone, "activation", "gelu")),
            layer_norm_epsilon=getattr(backbone, "layer_norm_epsilon", 1e-12),
            kernel_initializer=init,
            dtype=backbone.dtype_policy,
            name="mlm_head",
        )
        self.sentence_head = SentencePredictionHead(
            num_classes=num_sentence_classes,
            kernel_initializer=bert_kernel_initializer(backbone.initializer_range),
            dtype=backbone.dtype_policy,
            name="sentence_head",
        )

        # === Functional Model ===
        inputs = dict(backbone.input)
        inputs[features.MASKED_LM_POSITIONS] = keras.Input(
            shape=(None,), dtype="int32", name=features.MASKED_LM_POSITIONS
        )
        encoded = backbone(
            {
                k: inputs[k]
                for k in (features.INPUT_IDS, features.INPUT_MASK, features.SEGMENT_IDS)
            }
        )
        outputs = {
            MLM_LOGITS: self.mlm_head(
                encoded["sequence_output"],
                masked_positions=inputs[features.MASKED_LM_POSITIONS],
            ),
            SENTENCE_LOGITS: self.sentence_head(encoded["pooled_output"]),
        }
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_sentence_classes = num_sentence_classes

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_sentence_classes": self.num_sentence_classes,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def pretraining_loss_terms(batch, outputs):
    """Per-example sums from which losses and metrics are formed.

    Args:
        batch: dict with `masked_lm_ids` int `[b, p]`, `masked_lm_weights`
            float `[b, p]` (1 real / 0 padding) and `next_sentence_labels`
            int `[b]` or `[b, 1]`.
        outputs: the pretrainer's output dict (float32 logits).

    Returns:
        dict of float32 `[b]` tensors: `mlm_loss_sum` (weighted token
        cross-entropy, nats), `mlm_weight` (real predictions),
        `mlm_correct` (weighted correct predictions), `sentence_loss`
        (nats) and `sentence_correct` (0/1).

    Summing these over the *global* batch and dividing (see
    `combine_loss_terms`) gives the same loss on one device as on N
    replicas, as in the Model Garden's `masked_lm.py` weighting.
    """
    ids = ops.cast(batch[features.MASKED_LM_IDS], "int32")
    weights = ops.cast(batch[features.MASKED_LM_WEIGHTS], "float32")
    # One XLA kernel over the `[b, p, vocab]` logits (and one for their
    # gradient) instead of TF's separate softmax-cross-entropy, max and
    # gather passes: half the loss time of a bf16 CPU step.
    mlm_loss_sum, mlm_correct = fused_ops.run(
        _mlm_loss_terms, outputs[MLM_LOGITS], ids, weights, fused=True
    )
    sentence_logits = outputs[SENTENCE_LOGITS]
    labels = ops.reshape(ops.cast(batch[features.NEXT_SENTENCE_LABELS], "int32"), (-1,))
    sentence_loss = ops.sparse_categorical_crossentropy(
        labels, sentence_logits, from_logits=True
    )
    sentence_correct = ops.cast(
        ops.equal(ops.cast(ops.argmax(sentence_logits, axis=-1), "int32"), labels),
        "float32",
    )
    return {
        "mlm_loss_sum": mlm_loss_sum,
        "mlm_weight": ops.sum(weights, axis=-1),
        "mlm_correct": mlm_correct,
        "sentence_loss": sentence_loss,
        "sentence_correct": sentence_correct,
    }


def _mlm_loss_terms(logits, ids, weights):
    """Weighted token cross-entropy and correct counts, summed per example.

    Args: float32 `logits` `[b, p, vocab]`, int32 `ids` and float32
    `weights` `[b, p]`. Returns two float32 `[b]` tensors.
    """
    token_loss = ops.sparse_categorical_crossentropy(ids, logits, from_logits=True)
    # Correct when the target's logit is the largest: a max reduction that
    # the softmax needs anyway (XLA shares it), unlike a separate argmax.
    target_logit = ops.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    correct = ops.cast(target_logit >= ops.max(logits, axis=-1), "float32")
    return ops.sum(token_loss * weights, axis=-1), ops.sum(correct * weights, axis=-1)


def combine_loss_terms(sums, total_mlm_weight, total_examples, sentence_weight=1.0):
    """Losses and metrics from summed terms.

    Args:
        sums: dict of scalars, each term of `pretraining_loss_terms` summed
            over the examples in hand (a replica's share or all).
        total_mlm_weight: scalar, `mlm_weight` summed over the GLOBAL batch.
        total_examples: scalar, the GLOBAL batch size.
        sentence_weight: float, the sentence loss's weight in `loss` (0 =
            masked-LM only: the sentence head gets no gradient).

    Returns dict of scalars: `loss` = `mlm_loss` + `sentence_weight` *
    `sentence_loss` (this
    share's contribution; replica shares add up to the global loss),
    `mlm_loss`, `sentence_loss`, `mlm_accuracy`, `sentence_accuracy`.
    """
    mlm_weight = ops.maximum(ops.cast(total_mlm_weight, "float32"), 1.0)
    examples = ops.cast(total_examples, "float32")
    mlm_loss = sums["mlm_loss_sum"] / mlm_weight
    sentence_loss = sums["sentence_loss"] / examples
    return {
        "loss": mlm_loss + sentence_weight * sentence_loss,
        "mlm_loss": mlm_loss,
        "sentence_loss": sentence_loss,
        "mlm_accuracy": sums["mlm_correct"] / mlm_weight,
        "sentence_accuracy": sums["sentence_correct"] / examples,
    }


def pretraining_losses(batch, outputs, sentence_weight=1.0):
    """Single-device convenience: `combine_loss_terms` over this batch."""
    terms = pretraining_loss_terms(batch, outputs)
    sums = {k: ops.sum(v) for k, v in terms.items()}
    return combine_loss_terms(
        sums, sums["mlm_weight"], ops.shape(terms["sentence_loss"])[0], sentence_weight
    )
