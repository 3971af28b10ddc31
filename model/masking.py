"""Dynamic masking: fresh masked-LM choices for every batch (RoBERTa).

The records keep the originals (masked `input_ids` plus `masked_lm_ids` at
`masked_lm_positions`), so the trainer can undo the stored masks and draw
new ones each step with tensorflow-text's `RandomItemSelector`,
`MaskValuesChooser` and `mask_language_model`, using the data config's
rates. `[CLS]`, `[SEP]` and `[PAD]` are never chosen; random replacements
come from ordinary (non-bracketed) tokens unless `random_tokens="any"`.
"""

import tensorflow as tf
import tensorflow_text as tf_text

from configs import features


def restore_original_ids(batch):
    """Undoes the stored masks: `input_ids` with originals put back.

    Args:
        batch: dict with `input_ids` `[b, s]`, `masked_lm_positions`,
            `masked_lm_ids` and `masked_lm_weights` `[b, p]`.

    Returns int `[b, s]` original token ids (padding weights are ignored).
    """
    ids = batch[features.INPUT_IDS]
    positions = tf.cast(batch[features.MASKED_LM_POSITIONS], tf.int32)
    originals = tf.cast(batch[features.MASKED_LM_IDS], ids.dtype)
    real = batch[features.MASKED_LM_WEIGHTS] > 0
    rows = tf.broadcast_to(
        tf.range(tf.shape(positions)[0])[:, None], tf.shape(positions)
    )
    indices = tf.stack(
        [tf.boolean_mask(rows, real), tf.boolean_mask(positions, real)], -1
    )
    return tf.tensor_scatter_nd_update(ids, indices, tf.boolean_mask(originals, real))


class _OrdinaryValuesChooser(tf_text.MaskValuesChooser):
    """MaskValuesChooser whose random tokens are drawn from a given id list."""

    def __init__(self, random_ids, mask_token, mask_token_rate, random_token_rate):
        super().__init__(
            len(random_ids), mask_token, mask_token_rate, random_token_rate
        )
        self._random_ids = tf.constant(random_ids, tf.int64)

    def get_mask_values(self, masked_lm_ids):
        flat = masked_lm_ids.flat_values
        draw = tf.random.uniform(tf.shape(flat))
        random_ids = tf.gather(
            self._random_ids,
            tf.random.uniform(
                tf.shape(flat),
                maxval=tf.shape(self._random_ids, tf.int64)[0],
                dtype=tf.int64,
            ),
        )
        mask_rate = self._mask_token_rate
        values = tf.where(
            draw < mask_rate,
            tf.cast(self.mask_token, flat.dtype),
            tf.where(
                draw < mask_rate + self._random_token_rate,
                tf.cast(random_ids, flat.dtype),
                flat,
            ),
        )
        return masked_lm_ids.with_flat_values(values)


class DynamicMasker:
    """Re-masks a batch of pretraining features (a `tf.data` map function).

    Args:
        vocab: list of tokens (id = index); special ids are looked up by name.
        max_predictions_per_seq: int, masked-LM slots per sequence.
        masked_lm_prob: float, fraction of real tokens chosen.
        mask_token_prob: float, chosen -> `[MASK]`.
        random_token_prob: float, chosen -> random token (rest kept).
        random_tokens: "ordinary" (non-bracketed tokens) or "any".

    Call with a batched feature dict (`[b, s]`/`[b, p]` tensors); returns
    the same dict with new `input_ids`, `masked_lm_positions`,
    `masked_lm_ids` and `masked_lm_weights` (same shapes and dtypes).
    """

    def __init__(
        self,
        vocab,
        *,
        max_predictions_per_seq,
        masked_lm_prob=0.15,
        mask_token_prob=0.8,
        random_token_prob=0.1,
        random_tokens="ordinary",
    ):
        special = features.special_token_ids(vocab)
        self.max_predictions_per_seq = max_predictions_per_seq
        self.selector = tf_text.RandomItemSelector(
            max_selections_per_batch=max_predictions_per_seq,
            selection_rate=masked_lm_prob,
            unselectable_ids=[
                special[features.CLS],
                special[features.SEP],
                special[features.PAD],
            ],
        )
        if random_tokens == "ordinary":
            ordinary = [
                i for i, t in enumerate(vocab) if not features.is_special_token(t)
            ]
            self.chooser = _OrdinaryValuesChooser(
                ordinary, special[features.MASK], mask_token_prob, random_token_prob
            )
        else:
            self.chooser = tf_text.MaskValuesChooser(
                len(vocab), special[features.MASK], mask_token_prob, random_token_prob
            )

    def __call__(self, batch):
        batch = dict(batch)
        ids = tf.cast(restore_original_ids(batch), tf.int64)
        seq_len = ids.shape[1] if ids.shape[1] is not None else tf.shape(ids)[1]
        lengths = tf.reduce_sum(tf.cast(batch[features.INPUT_MASK], tf.int64), 1)
        ragged = tf.RaggedTensor.from_tensor(ids, lengths=lengths)
        masked, positions, originals = tf_text.mask_language_model(
            ragged, item_selector=self.selector, mask_values_chooser=self.chooser
        )
        p = self.max_predictions_per_seq
        dtype = batch[features.INPUT_IDS].dtype
        batch[features.INPUT_IDS] = tf.cast(
            (
                masked.to_tensor(shape=[None, seq_len])
                if isinstance(seq_len, int)
                else masked.to_tensor(shape=tf.stack([tf.shape(ids)[0], seq_len]))
            ),
            dtype,
        )
        batch[features.MASKED_LM_POSITIONS] = tf.cast(
            positions.to_tensor(shape=[None, p]), dtype
        )
        batch[features.MASKED_LM_IDS] = tf.cast(
            originals.to_tensor(shape=[None, p]), dtype
        )
        batch[features.MASKED_LM_WEIGHTS] = tf.sequence_mask(
            positions.row_lengths(), p, dtype=tf.float32
        )
        return batch
