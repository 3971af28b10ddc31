"""Sentence (pair) classification task: backbone + dropout + dense."""

import keras
from keras import ops

from configs import features
from model.bert_backbone import bert_kernel_initializer

LOGITS = "logits"


@keras.saving.register_keras_serializable(package="bert")
class BertClassifier(keras.Model):
    """Classifies `[CLS] A [SEP] (B [SEP])` from the backbone's pooled output.

    Inputs: the backbone's dict of int32 `[batch, seq]` tensors
    (`input_ids`, `input_mask`, `segment_ids`). Output: float32 logits
    `[batch, num_classes]` (unnormalized; softmax gives probabilities).
    As google-research/bert's `run_classifier.py`: dropout, then one dense
    layer on the pooled `[CLS]` vector (dense + tanh inside the backbone),
    or with `pooling="mean"` on the mean of `sequence_output` over the real
    tokens (`input_mask` 1), as sentence-transformers models are trained
    (`sum(h * mask) / max(sum(mask), 1e-9)`); the backbone's pooler is then
    unused.

    Args:
        backbone: a `BertBackbone` instance (composition: never rebuilt;
            pretrained weights stay in it).
        num_classes: int. Number of labels.
        dropout: float. Dropout on the pooled output before the dense layer.
        pooling: "cls" (the backbone's pooled output) or "mean".
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    ```python
    backbone = BertBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
                            hidden_dim=16, intermediate_dim=32)
    classifier = BertClassifier(backbone, num_classes=2)
    logits = classifier({"input_ids": ids, "input_mask": mask,
                         "segment_ids": segments})  # (batch, 2)
    ```

    References:
     - [Devlin et al., 2019](https://arxiv.org/abs/1810.04805)
     - keras-hub `keras_hub/src/models/bert/bert_text_classifier.py`
    """

    def __init__(self, backbone, num_classes, dropout=0.1, pooling="cls", **kwargs):
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        # === Layers ===
        self.backbone = backbone
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=backbone.dtype_policy, name="output_dropout"
        )
        # Logits in float32 even under mixed precision (stable softmax).
        self.output_dense = keras.layers.Dense(
            num_classes,
            kernel_initializer=bert_kernel_initializer(backbone.initializer_range),
            dtype="float32",
            name=LOGITS,
        )

        # === Functional Model ===
        inputs = {
            k: backbone.input[k]
            for k in (features.INPUT_IDS, features.INPUT_MASK, features.SEGMENT_IDS)
        }
        if pooling == "mean":
            # The pooler is unused: frozen, so the optimizer has no weights
            # without gradients (and keeps the checkpoint's values as they were).
            backbone.pooled_dense.trainable = False
        encoded = backbone(inputs)
        if pooling == "cls":
            pooled = encoded["pooled_output"]
        else:
            pooled = mean_pool(encoded["sequence_output"], inputs[features.INPUT_MASK])
        x = self.output_dropout(pooled)
        outputs = self.output_dense(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.dropout = dropout
        self.pooling = pooling

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "pooling": self.pooling,
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def mean_pool(sequence_output, input_mask):
    """Mean over real tokens: float `[b, t, h]`, int `[b, t]` -> `[b, h]`.

    Summed in float32 (a bf16 sum over 128 tokens loses digits), returned
    in the input's dtype.
    """
    mask = ops.cast(input_mask, "float32")[:, :, None]
    total = ops.sum(ops.cast(sequence_output, "float32") * mask, axis=1)
    count = ops.maximum(ops.sum(mask, axis=1), 1e-9)
    return ops.cast(total / count, sequence_output.dtype)
