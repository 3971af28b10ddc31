"""Dynamic masking: fresh masked-LM choices for every batch (RoBERTa style).

The records keep the originals (masked `input_ids` plus `masked_lm_ids` at
`masked_lm_positions`), so the trainer can undo the stored masks and draw
new ones each step. The choice follows `configs/masking_rule.py`, the rule
the data job's static masks follow too: bracketed tokens (`[CLS]`,
`[SEP]`, `[PAD]`, `[UNK]`, `[MASK]`, `[unusedN]`, ...) and padding are
never chosen; the budget is `min(max_predictions_per_seq, max(1,
round(num_real_tokens * masked_lm_prob)))`; with `whole_word_mask` `##`
pieces go with the word before them, words are taken in random order and
one that would overshoot the budget is skipped; chosen tokens become
`[MASK]` / a random ordinary token / themselves at the data config's rates.

One implementation in `keras.ops`, static shapes only, for both backends:
under TensorFlow it runs as a `tf.data` map (`DynamicMasker.__call__`);
under JAX, `DynamicMasker.mask(batch, seed)` runs inside the jitted train
step, and this module imports neither TensorFlow nor tensorflow-text.

Randomness comes from a counter-based hash of `(seed, stream, row *
seq_length + column)` written in `keras.ops` integer arithmetic (the
`lowbias32` mixer by C. Wellons), not from `keras.random`: in Keras 3.15
`keras.random` takes a tensor seed under JAX only as a uint32 raw key (an
int32 one raises), and under TensorFlow not at all (`draw_seed` accepts
ints and `SeedGenerator`s, whose variable cannot live in a `tf.data` map
or be threaded through a pure jitted step). The hash also makes the
two backends draw bit-identical masks for the same seed, and its integer
sort keys carry the position in their low bits, so no two keys tie.
"""

import numpy as np

import keras
from keras import ops

from configs import features, masking_rule

_REPLACEMENT_BITS = 24  # uniform integer draws in [0, 2**24) for 80/10/10
# Random streams (one hash input each): choice order, 80/10/10, random id.
_ORDER, _REPLACE, _RANDOM_ID = 0, 1, 2


def restore_original_ids(batch):
    """Undoes the stored masks: `input_ids` with originals put back.

    Args:
        batch: dict with `input_ids` `[b, s]`, `masked_lm_positions`,
            `masked_lm_ids` and `masked_lm_weights` `[b, p]` (backend
            tensors of any integer dtype; weights float).

    Returns `[b, s]` original token ids, `input_ids`' dtype (slots whose
    weight is 0 are ignored). One scatter, no data-dependent shapes.
    """
    ids = batch[features.INPUT_IDS]
    seq = ids.shape[1]
    positions = ops.cast(batch[features.MASKED_LM_POSITIONS], "int32")
    originals = ops.cast(batch[features.MASKED_LM_IDS], ids.dtype)
    # Slots with weight 0 write into an extra column, cut off after.
    positions = ops.where(batch[features.MASKED_LM_WEIGHTS] > 0, positions, seq)
    padded = ops.pad(ids, [[0, 0], [0, 1]])
    restored = ops.scatter_update(
        padded, _row_major(positions), ops.reshape(originals, [-1])
    )
    return restored[:, :seq]


def _row_major(columns):
    """int32 `[b * n, 2]` (row, column) index pairs of a `[b, n]` table."""
    rows = ops.cumsum(ops.ones_like(columns), axis=0) - 1
    return ops.reshape(ops.stack([rows, columns], axis=-1), [-1, 2])


class DynamicMasker:
    """Re-masks a batch of pretraining features (`configs/masking_rule.py`).

    Args:
        vocab: list of tokens (id = index); special ids are looked up by name.
        max_predictions_per_seq: int, masked-LM slots per sequence (and the
            budget's cap).
        masked_lm_prob: float, fraction of real tokens chosen.
        mask_token_prob: float, chosen -> `[MASK]`.
        random_token_prob: float, chosen -> random token (rest kept).
        random_tokens: "ordinary" (non-bracketed tokens) or "any".
        whole_word_mask: choose all pieces of a word together.
        seed: int or None, seeds the seed draws of `__call__` on backends
            other than TensorFlow (TensorFlow uses its global seed).

    `mask(batch, seed)` is the pure, jit-friendly entry; calling the masker
    (`masker(batch)`, the `tf.data` map function) draws a fresh seed per
    call. Both take a batched feature dict and return the same dict with
    new `input_ids`, `masked_lm_positions`, `masked_lm_ids` and
    `masked_lm_weights` (same shapes and dtypes; the other features pass
    through).
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
        seed=None,
    ):
        self.rule = masking_rule.MaskingRule.create(
            vocab,
            max_predictions_per_seq=max_predictions_per_seq,
            masked_lm_prob=masked_lm_prob,
            mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob,
            random_tokens=random_tokens,
            whole_word_mask=whole_word_mask,
        )
        self.max_predictions_per_seq = max_predictions_per_seq
        self.whole_word_mask = whole_word_mask
        self._seed_rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, vocab, data, seed=None):
        """The masker of a `configs.schema.DataConfig`."""
        return cls(vocab, seed=seed, **masking_rule.rule_settings(data))

    def __call__(self, batch):
        """`mask(batch, fresh seed)`: the `tf.data` map function.

        Under TensorFlow the seed comes from a stateful `tf.random.uniform`
        op, so every batch gets fresh masks inside a `tf.data` map; on other
        backends from a numpy Generator (eager use only; inside `jax.jit`
        call `mask` with a seed instead).
        """
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            seed = tf.random.uniform([2], tf.int32.min, tf.int32.max, tf.int32)
        else:
            seed = self._seed_rng.integers(-(2**31), 2**31 - 1, 2, dtype=np.int32)
        return self.mask(batch, seed)

    def mask(self, batch, seed):
        """Fresh masks for `batch`, a pure function of `(batch, seed)`.

        Args:
            batch: dict of backend tensors: `input_ids`, `input_mask`,
                `segment_ids` int `[b, s]`; `masked_lm_positions`,
                `masked_lm_ids` int `[b, p]`; `masked_lm_weights` float
                `[b, p]` (the stored masks, undone first); other keys
                (`next_sentence_labels`) pass through. `s` and `p` must be
                static; `p` may differ from `max_predictions_per_seq`
                (the trainer's own number of slots).
            seed: int32 (or uint32) `[2]` tensor or pair of ints. Equal
                seeds give equal masks on either backend and however the
                batch is sharded (the draws depend on the seed and each
                token's global row and column only); use a new seed per
                step, e.g. `(run_seed, step)`.

        Returns a new dict: `input_ids` with the chosen tokens replaced,
        and `[b, max_predictions_per_seq]` `masked_lm_positions`
        (ascending, then 0), `masked_lm_ids` (the originals, then 0) and
        `masked_lm_weights` (1.0 per prediction, then 0.0), each in its
        input dtype. No data-dependent shapes: safe
        inside `jax.jit` and `tf.function`.
        """
        batch = dict(batch)
        rule, vocab = self.rule, self.rule.vocab
        seq = batch[features.INPUT_IDS].shape[1]
        # The output's slots: the masker's, whatever the records' were.
        pred = self.max_predictions_per_seq
        ids = ops.cast(restore_original_ids(batch), "int32")
        column = ops.arange(seq, dtype="int32")[None, :]
        lengths = ops.sum(ops.cast(batch[features.INPUT_MASK], "int32"), axis=1)
        selectable = ops.logical_and(
            column < lengths[:, None],
            ops.logical_not(ops.take(vocab.never_chosen, ids)),
        )
        budget = ops.take(rule.budget_table(seq), lengths)  # [b] int32
        # Hash counter per token: row * seq + column (dynamic batch size ok).
        rows = ops.cumsum(ops.ones_like(ids[:, :1]), axis=0) - 1
        counter = ops.cast(rows * seq + column, "uint32")
        seed = ops.cast(ops.convert_to_tensor(seed), "uint32")

        def bits(stream):
            return _random_bits(seed, stream, counter)

        if self.whole_word_mask:
            chosen = self._choose_whole_words(
                ids, selectable, budget, bits(_ORDER), column
            )
        else:
            # Exactly min(budget, selectable) positions, uniformly: those
            # with the smallest keys (unique, so the threshold is exact).
            key = _order_keys(bits(_ORDER), selectable, column, seq)
            # (A sort, not top_k: XLA:CPU's top_k is ~10x slower.)
            ordered = ops.sort(key, axis=1)
            threshold = ops.take_along_axis(ordered, budget[:, None] - 1, axis=1)
            chosen = ops.logical_and(selectable, key <= threshold)

        # 80/10/10, drawn for every token and applied where chosen.
        draw = ops.cast(ops.right_shift(bits(_REPLACE), _u32(8)), "int32")
        t_mask, t_keep = rule.replacement_thresholds(_REPLACEMENT_BITS)
        num_random = len(vocab.random_ids)
        scale = np.float32(num_random / 2.0**_REPLACEMENT_BITS)
        # Random id: floor(u * n / 2**24) for u uniform in [0, 2**24).
        index = ops.cast(ops.right_shift(bits(_RANDOM_ID), _u32(8)), "float32")
        index = ops.minimum(ops.cast(ops.floor(index * scale), "int32"), num_random - 1)
        replacement = ops.where(
            draw < t_mask,
            vocab.mask_id,
            ops.where(draw < t_keep, ops.take(vocab.random_ids, index), ids),
        )
        masked = ops.where(chosen, replacement, ids)

        # Chosen positions, ascending, put in the p slots by their rank
        # (never more than p are chosen: the budget is capped at p); the
        # others write into an extra slot, cut off after.
        rank = ops.cumsum(ops.cast(chosen, "int32"), axis=1) - 1
        slot = _row_major(ops.where(chosen, rank, pred))
        empty = ops.zeros_like(ids[:, :1]) + ops.zeros([1, pred + 1], "int32")
        columns = ops.zeros_like(ids) + column  # [b, s]
        position = ops.scatter_update(empty, slot, ops.reshape(columns, [-1]))
        original = ops.scatter_update(empty, slot, ops.reshape(ids, [-1]))
        real = ops.arange(pred, dtype="int32")[None, :] < ops.sum(
            ops.cast(chosen, "int32"), axis=1, keepdims=True
        )
        position, original = position[:, :pred], original[:, :pred]

        def like(name, value):
            return ops.cast(value, batch[name].dtype)

        batch[features.INPUT_IDS] = like(features.INPUT_IDS, masked)
        batch[features.MASKED_LM_POSITIONS] = like(
            features.MASKED_LM_POSITIONS, position
        )
        batch[features.MASKED_LM_IDS] = like(features.MASKED_LM_IDS, original)
        batch[features.MASKED_LM_WEIGHTS] = like(features.MASKED_LM_WEIGHTS, real)
        return batch

    def _choose_whole_words(self, ids, selectable, budget, order_bits, column):
        """bool `[b, s]`: the tokens the whole-word rule chooses.

        Words are indexed by order of appearance (slot k = the row's k-th
        word). The rule's pass over the words in random order, taking each
        one that fits, takes the same words as: repeatedly take the next
        word in that order (a key above the last taken one's) that fits
        what is left; a word skipped once never fits later. Each take adds
        at least one token, so `max_predictions_per_seq` rounds suffice.
        """
        seq = ids.shape[1]
        continuation = ops.take(self.rule.vocab.continuation, ids)
        before = ops.pad(selectable[:, :-1], [[0, 0], [1, 0]])
        # A `##` piece continues the word before it only if it touches it.
        start = ops.logical_and(
            selectable, ops.logical_not(ops.logical_and(continuation, before))
        )
        num_words = ops.sum(ops.cast(start, "int32"), axis=1)
        word = ops.maximum(ops.cumsum(ops.cast(start, "int32"), axis=1) - 1, 0)
        # Pieces per word slot: a segment sum over (row, word) ids.
        rows = ops.shape(ids)[0]
        segment = ops.reshape(
            word + seq * (ops.cumsum(ops.ones_like(word), 0) - 1), [-1]
        )
        word_length = ops.reshape(
            ops.segment_sum(
                ops.reshape(ops.cast(selectable, "int32"), [-1]),
                segment,
                num_segments=rows * seq,
            ),
            [-1, seq],
        )
        is_word = column < num_words[:, None]  # word slots in use
        key = _order_keys(order_bits, is_word, column, seq)
        never = np.int32(np.iinfo(np.int32).max)

        def take_next(_, state):
            taken, last_key, used = state
            fits = ops.logical_and(
                ops.logical_and(is_word, key > last_key[:, None]),
                word_length <= (budget - used)[:, None],
            )
            best = ops.min(ops.where(fits, key, never), axis=1)
            pick = ops.logical_and(fits, key == best[:, None])  # one or none
            used = used + ops.sum(ops.where(pick, word_length, 0), axis=1)
            return ops.logical_or(taken, pick), best, used

        taken, _, _ = ops.fori_loop(
            0,
            self.max_predictions_per_seq,
            take_next,
            (
                ops.zeros_like(is_word),
                ops.full_like(budget, -1),
                ops.zeros_like(budget),
            ),
        )
        return ops.logical_and(selectable, ops.take_along_axis(taken, word, axis=1))


def _u32(value):
    return ops.convert_to_tensor(np.uint32(value))


def _mix(x):
    """lowbias32: a uint32 -> uint32 bijection with near-ideal avalanche."""
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))
    x = ops.multiply(x, _u32(0x7FEB352D))
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(15)))
    x = ops.multiply(x, _u32(0x846CA68B))
    return ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))


def _random_bits(seed, stream, counter):
    """uint32 bits, uniform and independent per `(seed, stream, counter)`.

    Args:
        seed: uint32 `[2]`; stream: small python int; counter: uint32
            tensor (the element index). Same shape as `counter`.
    """
    golden = 0x9E3779B9  # 2**32 / phi: spreads the stream numbers
    key = _mix(ops.add(seed[1], _u32((golden * (stream + 1)) % 2**32)))
    key = _mix(ops.bitwise_xor(seed[0], key))
    second = _mix(ops.add(key, _u32(golden)))
    return _mix(ops.bitwise_xor(_mix(ops.add(counter, key)), second))


def _order_keys(bits, valid, index, size):
    """Unique non-negative int32 sort keys: random where `valid`, after all
    of those where not; the low bits hold `index` (< `size`), so equal
    random parts still differ."""
    index_bits = max(1, (size - 1).bit_length())
    random_bits = 30 - index_bits
    noise = ops.cast(ops.right_shift(bits, _u32(32 - random_bits)), "int32")
    return ops.where(valid, noise * (1 << index_bits) + index, (1 << 30) + index)
