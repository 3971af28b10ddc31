"""Masked-LM predictions: `create_masked_lm_predictions` + `MaskTokens`.

google-research/bert's rule: choose
`min(max_predictions_per_seq, max(1, round(len(tokens) * masked_lm_prob)))`
positions uniformly among the maskable ones (whole words together with
`whole_word_mask`), then replace each chosen token with `[MASK]` (80%), a
random token (10%) or keep it (10%). Positions come back sorted, with the
original ids, so the record keeps everything needed to re-mask later.

Differences from google-research/bert, both deliberate (USERS.md #9):
* No special token is ever chosen: `[CLS]`, `[SEP]`, `[PAD]`, `[MASK]` and
  `[UNK]` (predicting `[UNK]` teaches nothing). bert excluded only
  `[CLS]`/`[SEP]`.
* Random replacements are drawn from ordinary tokens (not `[PAD]`, `[CLS]`,
  `[SEP]`, `[MASK]`, `[UNK]`, `[unused*]`) unless `random_tokens="any"`
  asks for bert's draw over the whole vocabulary.
"""

from __future__ import annotations

import random
from typing import Callable, NamedTuple, Sequence

import apache_beam as beam

from configs import features
from pipelines import text

# === Counters (namespace MaskTokens) ===
NAMESPACE = "MaskTokens"
TOKENS_MASKED = "tokens-chosen-for-prediction"
TOKENS_TO_MASK = "tokens-replaced-by-mask"
TOKENS_TO_RANDOM = "tokens-replaced-by-random-token"
TOKENS_KEPT = "tokens-kept-unchanged"

RANDOM_TOKENS = ("ordinary", "any")
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
    """What masking needs to know about a vocabulary, computed once.

    mask_id: id of `[MASK]`; never_mask: ids never chosen (specials);
    random_ids: ids random replacements are drawn from; continuation: for
    each id, whether it is a `##` word piece (for whole-word masking).
    """

    mask_id: int
    never_mask: frozenset
    random_ids: Sequence[int]
    continuation: Sequence[bool]


def masking_vocab(vocab: list[str], random_tokens: str = "ordinary") -> MaskingVocab:
    """Builds `MaskingVocab`; special tokens are looked up by name."""
    if random_tokens not in RANDOM_TOKENS:
        raise ValueError(f"random_tokens must be one of {RANDOM_TOKENS}")
    ids = features.special_token_ids(vocab)
    never_mask = frozenset(ids.values())
    if random_tokens == "any":
        random_ids = range(len(vocab))
    else:
        random_ids = [
            i
            for i, tok in enumerate(vocab)
            if not features.is_special_token(tok) and i not in never_mask
        ]
        if not random_ids:
            raise ValueError("vocabulary has no ordinary tokens to draw from")
    continuation = [tok.startswith("##") for tok in vocab]
    return MaskingVocab(ids[features.MASK], never_mask, random_ids, continuation)


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
    num_to_predict = min(
        max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob)))
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


# === Beam ===
class MaskedInstance(NamedTuple):
    """What `MaskTokens` emits: masked ids, length of `[CLS] A [SEP]`,
    sentence label, sorted masked positions and their original ids."""

    input_ids: list
    num_a: int
    label: int
    positions: list
    original_ids: list


class _MaskFn(beam.DoFn):
    def __init__(self, vocab_path: str, random_tokens: str, **params):
        self._vocab_path = vocab_path  # read in setup(), not pickled
        self._random_tokens = random_tokens
        self._params = params

    def setup(self):
        vocab = features.read_vocab(self._vocab_path)
        self._vocab = masking_vocab(vocab, self._random_tokens)
        self._count = text.counter_fn(NAMESPACE)

    def process(self, instance):
        # The seed was drawn from the document's (seed, fingerprint, round)
        # rng, so masks do not depend on where this element runs.
        rng = random.Random(instance.mask_seed)
        masked = create_masked_lm_predictions(
            instance.input_ids,
            rng,
            vocab=self._vocab,
            counter_inc_fn=self._count,
            **self._params,
        )
        yield MaskedInstance(
            masked.output_ids,
            instance.num_a,
            instance.label,
            masked.positions,
            masked.original_ids,
        )


class MaskTokens(beam.PTransform):
    """Applies masked-LM masking to instances.

    Input: `sentence_pairs.Instance` (`input_ids`, `num_a`, `label`,
    `mask_seed`). Output: `MaskedInstance` (`input_ids` masked, `num_a`,
    `label`, `positions`, `original_ids`).
    """

    def __init__(
        self,
        *,
        vocab_path: str,
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
        if max_predictions_per_seq < 1:
            raise ValueError("max_predictions_per_seq must be at least 1")
        if random_tokens not in RANDOM_TOKENS:
            raise ValueError(f"random_tokens must be one of {RANDOM_TOKENS}")
        self._fn = _MaskFn(
            vocab_path,
            random_tokens,
            masked_lm_prob=masked_lm_prob,
            max_predictions_per_seq=max_predictions_per_seq,
            whole_word_mask=whole_word_mask,
            mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob,
        )

    def expand(self, instances):
        return instances | "Mask" >> beam.ParDo(self._fn)
