"""Dynamic masking: fresh masked-LM choices for every batch (RoBERTa).

The records keep the originals (masked `input_ids` plus `masked_lm_ids` at
`masked_lm_positions`), so the trainer can undo the stored masks and draw
new ones each step with tensorflow-text's `RandomItemSelector`,
`MaskValuesChooser` and `mask_language_model`, using the data config's
rates. `[CLS]`, `[SEP]` and `[PAD]` are never chosen; random replacements
come from ordinary (non-bracketed) tokens unless `random_tokens="any"`.

With `whole_word_mask` the choice follows the data job's whole-word rule
(`pipelines.masking`, google-research/bert): a `##` piece belongs to the
word before it, `round(length * masked_lm_prob)` tokens (capped at
`max_predictions_per_seq`) are filled with whole words taken in random
order, and a word that would overshoot is skipped. tensorflow-text's
`mask_language_model` also masks whole words given `[batch, (words),
(pieces)]`, but its rate and cap count words, not tokens, so a few long
words could overflow the `max_predictions_per_seq` label slots; the
choice is made here and only the 80/10/10 replacement is tensorflow-text's.
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
        whole_word_mask: choose all pieces of a word together (see the
            module docstring); specials (`[CLS]`, `[SEP]`, `[PAD]`,
            `[UNK]`, `[MASK]`) are never chosen, as in the data job.

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
        whole_word_mask=False,
    ):
        special = features.special_token_ids(vocab)
        self.max_predictions_per_seq = max_predictions_per_seq
        self.masked_lm_prob = masked_lm_prob
        self.whole_word_mask = whole_word_mask
        # Per-id lookups for the whole-word rule: bool [vocab_size].
        never = set(special.values())
        self._never = tf.constant([i in never for i in range(len(vocab))])
        self._continuation = tf.constant([t.startswith("##") for t in vocab])
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
        if self.whole_word_mask:
            masked, positions, originals = self._mask_whole_words(ids, lengths)
        else:
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

    def _choose_whole_words(self, ids, lengths):
        """bool `[b, s]`: the tokens chosen by the whole-word rule.

        Args:
            ids: int64 `[b, s]` original ids; lengths: int64 `[b]`.
        """
        seq = tf.shape(ids)[1]
        position = tf.range(seq, dtype=tf.int64)[None, :]
        selectable = (position < lengths[:, None]) & ~tf.gather(self._never, ids)
        after_selectable = tf.pad(selectable[:, :-1], [[0, 0], [1, 0]])
        # A `##` piece continues the word before it only if it touches it.
        starts = selectable & ~(tf.gather(self._continuation, ids) & after_selectable)
        word = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1  # [b, s]
        num_words = word[:, -1] + 1  # [b]
        # Pieces per word, [b, s] (a row has at most s words).
        word_length = tf.math.bincount(
            tf.where(selectable, word, seq),
            minlength=seq + 1,
            axis=-1,
            dtype=tf.int32,
        )[:, :seq]
        # A random order of each row's words (the others sort last).
        has_word = tf.range(seq)[None, :] < num_words[:, None]
        order = tf.argsort(
            tf.where(has_word, tf.random.uniform(tf.shape(ids)), 2.0), axis=1
        )
        lengths_in_order = tf.gather(word_length, order, batch_dims=1)
        target = tf.minimum(
            self.max_predictions_per_seq,
            tf.maximum(
                1,
                tf.cast(
                    tf.round(tf.cast(lengths, tf.float32) * self.masked_lm_prob),
                    tf.int32,
                ),
            ),
        )

        # Take words in that order while they fit; skip one that overshoots.
        def take(used, length):
            fits = (length > 0) & (used + length <= target)
            return used + tf.where(fits, length, 0), fits

        longest = tf.reduce_max(num_words)
        _, taken = tf.scan(
            lambda state, length: take(state[0], length),
            tf.transpose(lengths_in_order[:, :longest]),
            initializer=(tf.zeros_like(target), tf.zeros_like(target, tf.bool)),
        )
        taken = tf.pad(tf.transpose(taken), [[0, 0], [0, seq - longest]])
        chosen_word = tf.gather(taken, tf.argsort(order, axis=1), batch_dims=1)
        return selectable & tf.gather(chosen_word, tf.maximum(word, 0), batch_dims=1)

    def _mask_whole_words(self, ids, lengths):
        """(masked ids ragged `[b, (len)]`, positions, originals `[b, (n)]`)."""
        chosen = self._choose_whole_words(ids, lengths)
        grid = tf.broadcast_to(
            tf.range(tf.shape(ids)[1], dtype=tf.int64)[None, :], tf.shape(ids)
        )
        positions = tf.ragged.boolean_mask(grid, chosen)  # ascending per row
        originals = tf.ragged.boolean_mask(ids, chosen)
        values = self.chooser.get_mask_values(originals)
        masked = tf.tensor_scatter_nd_update(ids, tf.where(chosen), values.flat_values)
        return (
            tf.RaggedTensor.from_tensor(masked, lengths=lengths),
            positions,
            originals,
        )
