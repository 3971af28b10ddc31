"""The masked-LM masking rule, written down once.

Both the data job's static masks (`pipelines/masking.py`, numpy and
`random.Random`) and the trainer's dynamic masks (`model/masking.py`,
`keras.ops` on the TensorFlow and JAX backends) follow this rule and build
their lookup tables here. Their random streams differ (the same seed does
not give the same masks in the data job and the trainer); the rule and the
distribution it defines are the same, and one set of property tests
(`tests/masking_properties.py`) checks every implementation against it.

The rule, for one sequence `[CLS] A [SEP] B [SEP]` (then padding):

1. **Never chosen**: padding (positions past the sequence's real tokens)
   and every *bracketed* token of the vocabulary, i.e. every token `t`
   with `features.is_special_token(t)`: `[PAD]`, `[UNK]`, `[CLS]`,
   `[SEP]`, `[MASK]`, and also `[unused0]`, `[unused1]`, ... and any other
   `[...]` control token. Predicting `[UNK]` teaches nothing, and the
   tokenizer never emits a bracketed token for text (`[` is punctuation),
   so a bracketed token in a record is always a control token someone put
   there. (google-research/bert excluded only `[CLS]` and `[SEP]`.) The
   other tokens are *selectable*.
2. **Budget**: `num_to_predict = min(max_predictions_per_seq, max(1,
   round(num_real_tokens * masked_lm_prob)))`, where `num_real_tokens` is
   the length of the unpadded sequence *including* `[CLS]` and the `[SEP]`s
   (= the sum of `input_mask`), and `round` is Python's: float64, half to
   even (`round(30 * 0.15) == 4`, `round(10 * 0.15) == 2`). Implementations
   look it up in `MaskingRule.budget_table` instead of recomputing it, so a
   float32 product cannot round the other way.
3. **Choice**: the selectable positions are grouped into *words*. Without
   `whole_word_mask` every selectable position is its own word. With it, a
   selectable `##` piece joins the word of the position right before it
   when that position is selectable too; otherwise (first token, or after a
   never-chosen token such as `[UNK]`) it starts a word of its own. Words
   are visited in a uniformly random order; a word is taken if it fits in
   what is left of the budget and skipped otherwise (a later, shorter word
   may still fit). So without whole words exactly
   `min(num_to_predict, num_selectable)` positions are chosen, uniformly
   at random; with whole words at most `num_to_predict`, possibly fewer
   (when no remaining word fits). When fewer tokens are selectable than the
   budget, all of them are chosen (whole words: all words that fit); a
   sequence with no selectable token gets no prediction (all
   `masked_lm_weights` 0), never one on a control token.
4. **Replacement (80/10/10)**: independently for each chosen position,
   with probability `mask_token_prob` the token becomes `[MASK]`; with
   probability `random_token_prob` it becomes a token drawn uniformly from
   `MaskingVocab.random_ids`; otherwise it is kept. With
   `random_tokens="ordinary"` (the default) `random_ids` are the
   selectable (non-bracketed) tokens; `random_tokens="any"` is bert's draw
   over the whole vocabulary, control tokens included. A random draw may
   equal the original token.
5. **Output**: `masked_lm_positions` are the chosen positions, unique and
   ascending, then zeros; `masked_lm_ids` the original tokens there, then
   zeros; `masked_lm_weights` 1.0 per chosen position, then 0.0. Tokens
   that are not chosen are left unchanged.

This module is TF-free (numpy only): `configs` is shared by the Beam
workers and the trainers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from configs import features

RANDOM_TOKENS = ("ordinary", "any")
CONTINUATION_PREFIX = "##"


def budget(
    num_real_tokens: int, masked_lm_prob: float, max_predictions_per_seq: int
) -> int:
    """Tokens to predict for a sequence of `num_real_tokens` (rule 2)."""
    wanted = max(1, int(round(num_real_tokens * masked_lm_prob)))
    return min(max_predictions_per_seq, wanted)


def budget_table(
    max_seq_length: int, masked_lm_prob: float, max_predictions_per_seq: int
) -> np.ndarray:
    """int32 `[max_seq_length + 1]`: the budget of a sequence of n real
    tokens at index n."""
    return np.array(
        [
            budget(n, masked_lm_prob, max_predictions_per_seq)
            for n in range(max_seq_length + 1)
        ],
        np.int32,
    )


def is_never_chosen(token: str) -> bool:
    """True for tokens the rule never chooses: bracketed control tokens."""
    return features.is_special_token(token)


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingVocab:
    """What the rule needs to know about a vocabulary, as lookup tables.

    Attributes:
        mask_id: int, id of `[MASK]`.
        never_chosen: bool `[vocab_size]`, True for the ids never chosen.
        continuation: bool `[vocab_size]`, True for `##` pieces.
        random_ids: int32 `[n]`, ascending, the ids random replacements are
            drawn from (uniformly).
    """

    mask_id: int
    never_chosen: np.ndarray
    continuation: np.ndarray
    random_ids: np.ndarray

    @property
    def size(self) -> int:
        return len(self.never_chosen)


def masking_vocab(vocab: list[str], random_tokens: str = "ordinary") -> MaskingVocab:
    """Builds the rule's tables for `vocab` (token i has id i).

    Raises ValueError (one line) for an unknown `random_tokens`, a
    vocabulary without the required special tokens, or one with no
    ordinary token to draw from.
    """
    if random_tokens not in RANDOM_TOKENS:
        raise ValueError(f"random_tokens must be one of {RANDOM_TOKENS}")
    ids = features.special_token_ids(vocab)
    never = np.array([is_never_chosen(t) for t in vocab], bool)
    continuation = np.array([t.startswith(CONTINUATION_PREFIX) for t in vocab], bool)
    if random_tokens == "any":
        random_ids = np.arange(len(vocab), dtype=np.int32)
    else:
        random_ids = np.flatnonzero(~never).astype(np.int32)
        if not len(random_ids):
            raise ValueError("vocabulary has no ordinary tokens to draw from")
    for table in (never, continuation, random_ids):
        table.setflags(write=False)
    return MaskingVocab(ids[features.MASK], never, continuation, random_ids)


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingRule:
    """The rule's settings for one vocabulary (see the module docstring).

    Attributes:
        vocab: `MaskingVocab` tables.
        max_predictions_per_seq: int >= 1, the budget's cap and the number
            of `masked_lm_*` slots.
        masked_lm_prob: float in (0, 1), fraction of real tokens to predict.
        mask_token_prob: float, chosen -> `[MASK]`.
        random_token_prob: float, chosen -> random token (rest kept).
        whole_word_mask: bool, group `##` pieces with their word.
    """

    vocab: MaskingVocab
    max_predictions_per_seq: int
    masked_lm_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    whole_word_mask: bool = False

    def __post_init__(self):
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError("masked_lm_prob must be in (0, 1)")
        if self.max_predictions_per_seq < 1:
            raise ValueError("max_predictions_per_seq must be at least 1")
        if not (
            0.0 <= self.mask_token_prob
            and 0.0 <= self.random_token_prob
            and self.mask_token_prob + self.random_token_prob <= 1.0
        ):
            raise ValueError("mask_token_prob + random_token_prob must be in [0, 1]")

    @classmethod
    def create(
        cls,
        vocab: list[str],
        *,
        max_predictions_per_seq: int,
        masked_lm_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        random_tokens: str = "ordinary",
        whole_word_mask: bool = False,
    ) -> "MaskingRule":
        """The rule for a token list with the `DataConfig` field names."""
        return cls(
            masking_vocab(vocab, random_tokens),
            max_predictions_per_seq=max_predictions_per_seq,
            masked_lm_prob=masked_lm_prob,
            mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob,
            whole_word_mask=whole_word_mask,
        )

    @classmethod
    def from_config(cls, vocab: list[str], data) -> "MaskingRule":
        """The rule of a `configs.schema.DataConfig` for a token list."""
        return cls.create(vocab, **rule_settings(data))

    def budget(self, num_real_tokens: int) -> int:
        """Tokens to predict for a sequence of `num_real_tokens` (rule 2)."""
        return budget(
            num_real_tokens, self.masked_lm_prob, self.max_predictions_per_seq
        )

    def budget_table(self, max_seq_length: int) -> np.ndarray:
        """int32 `[max_seq_length + 1]`: `budget(n)` at index n."""
        return budget_table(
            max_seq_length, self.masked_lm_prob, self.max_predictions_per_seq
        )

    def replacement_thresholds(self, bits: int) -> tuple[int, int]:
        """`(t_mask, t_keep)` for integer draws `u` uniform in `[0, 2**bits)`:
        `u < t_mask` -> `[MASK]`, `t_mask <= u < t_keep` -> random token,
        else kept (rule 4 with exact integer comparisons)."""
        scale = 1 << bits
        t_mask = int(round(self.mask_token_prob * scale))
        t_keep = int(round((self.mask_token_prob + self.random_token_prob) * scale))
        return t_mask, min(t_keep, scale)


# The `DataConfig` fields the rule is made of (`MaskingRule.create`'s
# keyword arguments, and the trainer's masker's).
RULE_FIELDS = (
    "max_predictions_per_seq",
    "masked_lm_prob",
    "mask_token_prob",
    "random_token_prob",
    "random_tokens",
    "whole_word_mask",
)


def rule_settings(data) -> dict:
    """{field: value} of `RULE_FIELDS` from a `configs.schema.DataConfig`."""
    return {name: getattr(data, name) for name in RULE_FIELDS}
