"""Masked-LM predictions: `create_masked_lm_predictions` + `MaskTokens`.

The rule (which ids are never chosen, the token budget, whole-word
grouping, 80/10/10) is `configs/masking_rule.py`'s, the one the trainer's
dynamic masking follows too; this module builds its lookup tables there.
In short: choose `min(max_predictions_per_seq, max(1, round(len(tokens) *
masked_lm_prob)))` positions uniformly among the selectable ones (whole
words together with `whole_word_mask`; bracketed tokens such as `[CLS]`,
`[SEP]`, `[UNK]`, `[MASK]`, `[unused3]` are never chosen), then replace
each chosen token with `[MASK]` (80%), a random ordinary token (10%) or
keep it (10%). Positions come back sorted, with the original ids, so the
record keeps everything needed to re-mask later.

`create_masked_lm_predictions` (one instance, `random.Random`) is the
reference; `create_masked_lm_predictions_batch` applies the same rule to a
padded `[n, L]` array with one numpy Generator, which is what `MaskTokens`
runs (whole-word masking goes through the reference per instance).
"""

from __future__ import annotations

import random
from typing import Callable, NamedTuple, Sequence

import numpy as np

import apache_beam as beam

from configs import features, masking_rule
from pipelines import text

# === Counters (namespace MaskTokens) ===
NAMESPACE = "MaskTokens"
TOKENS_MASKED = "tokens-chosen-for-prediction"
TOKENS_TO_MASK = "tokens-replaced-by-mask"
TOKENS_TO_RANDOM = "tokens-replaced-by-random-token"
TOKENS_KEPT = "tokens-kept-unchanged"

RANDOM_TOKENS = masking_rule.RANDOM_TOKENS
CounterFn = Callable[[str, int], None]


def _no_count(name: str, value: int = 1) -> None:
    pass


class MaskedLmPredictions(NamedTuple):
    """output_ids: the ids after replacement; positions: sorted, unique;
    original_ids: the ids that stood at `positions` before masking."""

    output_ids: list
    positions: list
    original_ids: list


class MaskingVocab(NamedTuple):
    """The rule's tables (`configs.masking_rule.masking_vocab`) plus the
    Python views the per-instance path reads (a set and lists index faster
    than numpy arrays one element at a time).

    mask_id: id of `[MASK]`; never_mask: ids never chosen; random_ids: ids
    random replacements are drawn from; continuation: for each id, whether
    it is a `##` word piece (for whole-word masking); never_mask_table:
    bool `[vocab_size]`; random_ids_array: int32, for the batch path.
    """

    mask_id: int
    never_mask: frozenset
    random_ids: Sequence[int]
    continuation: Sequence[bool]
    never_mask_table: np.ndarray
    random_ids_array: np.ndarray


def masking_vocab(vocab: list[str], random_tokens: str = "ordinary") -> MaskingVocab:
    """Builds `MaskingVocab`; special tokens are looked up by name."""
    tables = masking_rule.masking_vocab(vocab, random_tokens)
    return MaskingVocab(
        tables.mask_id,
        frozenset(np.flatnonzero(tables.never_chosen).tolist()),
        tables.random_ids.tolist(),
        tables.continuation.tolist(),
        tables.never_chosen,
        tables.random_ids,
    )


def create_masked_lm_predictions(
    tokens: Sequence[int],
    rng: random.Random,
    *,
    vocab: MaskingVocab,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    whole_word_mask: bool = False,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    counter_inc_fn: CounterFn = _no_count,
) -> MaskedLmPredictions:
    """Chooses and replaces tokens for the masked-LM task.

    Args:
        tokens: `[CLS] A [SEP] B [SEP]` ids, unpadded.
        rng: the only source of randomness.
        vocab: from `masking_vocab`.
        masked_lm_prob: fraction of `len(tokens)` to predict.
        max_predictions_per_seq: upper bound on predictions.
        whole_word_mask: choose all word pieces of a word together
            (a `##` piece belongs to the word before it).
        mask_token_prob, random_token_prob: replacement rates (the rest of
            the chosen tokens are kept).
        counter_inc_fn: `fn(name, value)` for replacement counts.
    """
    num_to_predict = masking_rule.budget(
        len(tokens), masked_lm_prob, max_predictions_per_seq
    )
    never = vocab.never_mask
    if whole_word_mask:
        words: list[list[int]] = []
        cont = vocab.continuation
        for i, token in enumerate(tokens):
            if token in never:
                continue
            if words and cont[token] and words[-1][-1] == i - 1:
                words[-1].append(i)
            else:
                words.append([i])
        rng.shuffle(words)
        chosen: list[int] = []
        for word in words:
            if len(chosen) >= num_to_predict:
                break
            # Skip words that would overshoot (bert does the same).
            if len(chosen) + len(word) > num_to_predict:
                continue
            chosen.extend(word)
    else:
        candidates = [i for i, token in enumerate(tokens) if token not in never]
        chosen = rng.sample(candidates, min(num_to_predict, len(candidates)))
    chosen.sort()

    output = list(tokens)
    originals = [output[i] for i in chosen]
    random_ids = vocab.random_ids
    n_mask = n_random = 0
    keep_threshold = mask_token_prob + random_token_prob
    for i in chosen:
        r = rng.random()
        if r < mask_token_prob:
            output[i] = vocab.mask_id
            n_mask += 1
        elif r < keep_threshold:
            output[i] = random_ids[rng.randrange(len(random_ids))]
            n_random += 1
    counter_inc_fn(TOKENS_MASKED, len(chosen))
    counter_inc_fn(TOKENS_TO_MASK, n_mask)
    counter_inc_fn(TOKENS_TO_RANDOM, n_random)
    counter_inc_fn(TOKENS_KEPT, len(chosen) - n_mask - n_random)
    return MaskedLmPredictions(output, chosen, originals)


def create_masked_lm_predictions_batch(
    input_ids: np.ndarray,
    lengths: np.ndarray,
    rng: np.random.Generator,
    *,
    vocab: MaskingVocab,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    counter_inc_fn: CounterFn = _no_count,
):
    """`create_masked_lm_predictions` for many instances at once (numpy).

    The same rule and distribution (a uniform choice of
    `min(max_pred, max(1, round(length * masked_lm_prob)))` maskable
    positions, 80/10/10), computed with array operations instead of a
    Python loop per token; whole-word masking uses the per-instance
    function.

    Args:
        input_ids: int array `[n, L]`, row i holds `lengths[i]` ids then
            padding (`L >= max_predictions_per_seq`).
        lengths: int array `[n]`.
        rng: numpy Generator, the only source of randomness.

    Returns:
        `(output_ids [n, L], positions [n, P], original_ids [n, P],
        num_masked [n])`, P = `max_predictions_per_seq`; positions sorted
        ascending in their first `num_masked[i]` slots, zero after.
    """
    ids = np.asarray(input_ids)
    n, width = ids.shape
    pred = max_predictions_per_seq
    columns = np.arange(width)
    maskable = (columns < lengths[:, None]) & ~vocab.never_mask_table[ids]
    budgets = masking_rule.budget_table(width, masked_lm_prob, pred)
    num_masked = np.minimum(budgets[lengths], maskable.sum(axis=1))
    # A uniform random subset: the smallest random keys among maskable slots.
    keys = rng.random((n, width))
    keys[~maskable] = 2.0
    order = np.argsort(keys, axis=1)[:, :pred]
    taken = np.arange(pred) < num_masked[:, None]
    positions = np.sort(np.where(taken, order, width), axis=1)
    positions[~taken] = 0
    originals = np.take_along_axis(ids, positions, axis=1)
    originals[~taken] = 0

    draw = rng.random((n, pred))
    to_mask = taken & (draw < mask_token_prob)
    to_random = taken & ~to_mask & (draw < mask_token_prob + random_token_prob)
    random_ids = vocab.random_ids_array
    replacement = random_ids[rng.integers(0, len(random_ids), size=(n, pred))]
    values = np.where(
        to_mask, vocab.mask_id, np.where(to_random, replacement, originals)
    )
    # Untaken slots point at column 0 ([CLS]) and write its own id back.
    values = np.where(taken, values, ids[:, :1])
    output = ids.copy()
    np.put_along_axis(output, positions, values.astype(ids.dtype), axis=1)
    total = int(num_masked.sum())
    n_mask, n_random = int(to_mask.sum()), int(to_random.sum())
    counter_inc_fn(TOKENS_MASKED, total)
    counter_inc_fn(TOKENS_TO_MASK, n_mask)
    counter_inc_fn(TOKENS_TO_RANDOM, n_random)
    counter_inc_fn(TOKENS_KEPT, total - n_mask - n_random)
    return output, positions, originals, num_masked


# === Beam ===
class MaskedBatch(NamedTuple):
    """What `MaskTokens` emits: one bucket-round's masked instances.

    input_ids: int32 `[n, max_seq_length]` masked, zero-padded; lengths,
    num_a (length of `[CLS] A [SEP]`), labels, num_masked: `[n]`;
    positions, original_ids: `[n, max_predictions_per_seq]`, sorted
    positions first, zero-padded.
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    num_a: np.ndarray
    labels: np.ndarray
    positions: np.ndarray
    original_ids: np.ndarray
    num_masked: np.ndarray


def mask_instance_batch(
    batch, *, vocab, max_seq_length, whole_word_mask, counter_inc_fn=_no_count, **params
):
    """`sentence_pairs.InstanceBatch` -> `MaskedBatch`; randomness from
    `batch.mask_seed` only."""
    ids = batch.input_ids[:, :max_seq_length]
    lengths = np.asarray(batch.lengths, np.int64)
    n = len(lengths)
    pred = params["max_predictions_per_seq"]
    if whole_word_mask:
        positions = np.zeros((n, pred), np.int32)
        originals = np.zeros((n, pred), np.int32)
        num_masked = np.zeros(n, np.int64)
        output = ids.copy()
        for i, row in enumerate(ids.tolist()):
            row = row[: lengths[i]]
            rng = random.Random(text.derive_seed(batch.mask_seed, i))
            got = create_masked_lm_predictions(
                row,
                rng,
                vocab=vocab,
                whole_word_mask=True,
                counter_inc_fn=counter_inc_fn,
                **params,
            )
            m = len(got.positions)
            output[i, : len(row)] = got.output_ids
            positions[i, :m] = got.positions
            originals[i, :m] = got.original_ids
            num_masked[i] = m
    else:
        output, positions, originals, num_masked = create_masked_lm_predictions_batch(
            ids,
            lengths,
            np.random.default_rng(batch.mask_seed),
            vocab=vocab,
            counter_inc_fn=counter_inc_fn,
            **params,
        )
    return MaskedBatch(
        output,
        lengths,
        np.asarray(batch.num_a, np.int64),
        np.asarray(batch.labels, np.int64),
        positions,
        originals,
        num_masked,
    )


class _MaskFn(beam.DoFn):
    def __init__(self, vocab_path: str, random_tokens: str, **params):
        self._vocab_path = vocab_path  # read in setup(), not pickled
        self._random_tokens = random_tokens
        self._params = params

    def setup(self):
        vocab = features.read_vocab(self._vocab_path)
        self._vocab = masking_vocab(vocab, self._random_tokens)
        self._count = text.counter_fn(NAMESPACE)

    def process(self, batch):
        # batch.mask_seed comes from (seed, bucket, round, slice), so masks
        # do not depend on where or in which order this element runs.
        yield mask_instance_batch(
            batch, vocab=self._vocab, counter_inc_fn=self._count, **self._params
        )


class MaskTokens(beam.PTransform):
    """Applies masked-LM masking to batches of instances.

    Input: `sentence_pairs.InstanceBatch` (one bucket-round's instances:
    padded `input_ids`, `lengths`, `num_a`, `labels`, `mask_seed`). Output:
    `MaskedBatch` (padded numpy arrays, see there).
    """

    def __init__(
        self,
        *,
        vocab_path: str,
        max_seq_length: int,
        masked_lm_prob: float,
        max_predictions_per_seq: int,
        whole_word_mask: bool = False,
        random_tokens: str = "ordinary",
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
    ):
        super().__init__()
        if not 0.0 < masked_lm_prob < 1.0:
            raise ValueError("masked_lm_prob must be in (0, 1)")
        if not 1 <= max_predictions_per_seq <= max_seq_length:
            raise ValueError("max_predictions_per_seq must be in [1, max_seq_length]")
        if random_tokens not in RANDOM_TOKENS:
            raise ValueError(f"random_tokens must be one of {RANDOM_TOKENS}")
        self._fn = _MaskFn(
            vocab_path,
            random_tokens,
            max_seq_length=max_seq_length,
            masked_lm_prob=masked_lm_prob,
            max_predictions_per_seq=max_predictions_per_seq,
            whole_word_mask=whole_word_mask,
            mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob,
        )

    def expand(self, batches):
        return batches | "Mask" >> beam.ParDo(self._fn)
