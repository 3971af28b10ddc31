"""The data job's masking functions: what the shared rule tests do not cover.

The rule's properties (never-chosen ids, budget, whole words, 80/10/10,
uniform choice) are checked for these functions and for the trainer's
dynamic masker by the same code: `tests/test_masking_rule.py`.
"""

import collections
import random

import numpy as np
import pytest

from configs import features
from pipelines import masking

VOCAB = (
    ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused1]"]
    + [f"w{i}" for i in range(40)]
    + [f"##p{i}" for i in range(20)]
)
IDS = features.special_token_ids(VOCAB)


def test_vocab_tables_come_from_the_rule():
    vocab = masking.masking_vocab(VOCAB)
    # Every bracketed token is never chosen, [unusedN] included.
    assert vocab.never_mask == {0, 1, 2, 3, 4, 5, 6}
    assert vocab.never_mask_table.tolist() == [i <= 6 for i in range(len(VOCAB))]
    assert vocab.random_ids == list(range(7, len(VOCAB)))
    assert vocab.continuation[47] and not vocab.continuation[7]
    assert masking.masking_vocab(VOCAB, "any").random_ids == list(range(len(VOCAB)))


def test_vocab_without_mask_token_is_refused():
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        masking.masking_vocab([t for t in VOCAB if t != "[MASK]"])


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_counters_add_up(whole_word_mask):
    vocab = masking.masking_vocab(VOCAB)
    counts = collections.Counter()
    chosen = 0
    for seed in range(200):
        rng = random.Random(seed)
        tokens = [IDS["[CLS]"]] + [rng.choice(range(7, 67)) for _ in range(30)]
        tokens.append(IDS["[SEP]"])
        out = masking.create_masked_lm_predictions(
            tokens,
            rng,
            vocab=vocab,
            masked_lm_prob=0.15,
            max_predictions_per_seq=20,
            whole_word_mask=whole_word_mask,
            counter_inc_fn=lambda name, v=1: counts.update({name: v}),
        )
        chosen += len(out.positions)
    assert counts[masking.TOKENS_MASKED] == chosen > 0
    parts = (masking.TOKENS_TO_MASK, masking.TOKENS_TO_RANDOM, masking.TOKENS_KEPT)
    assert sum(counts[name] for name in parts) == chosen


def test_batch_path_is_deterministic_per_seed():
    vocab = masking.masking_vocab(VOCAB)
    ids = np.array([[IDS["[CLS]"], *range(7, 27), IDS["[SEP]"], 0, 0]] * 8, np.int32)
    lengths = np.full(8, 22)

    def draw(seed):
        return masking.create_masked_lm_predictions_batch(
            ids,
            lengths,
            np.random.default_rng(seed),
            vocab=vocab,
            masked_lm_prob=0.15,
            max_predictions_per_seq=5,
        )

    for a, b in zip(draw(3), draw(3)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(draw(3)[1], draw(4)[1])
