"""Property tests of create_masked_lm_predictions over thousands of draws."""

import collections
import random

import pytest

from configs import features
from pipelines import masking

VOCAB = (
    ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused1]"]
    + [f"w{i}" for i in range(40)]
    + [f"##p{i}" for i in range(20)]
)
IDS = features.special_token_ids(VOCAB)
SPECIAL = set(IDS.values())
WORD_IDS = list(range(7, 47))
PIECE_IDS = list(range(47, 67))


def _instance(rng):
    def segment():
        out = []
        for _ in range(rng.randint(1, 25)):
            out.append(rng.choice(WORD_IDS + [IDS["[UNK]"]]))
            out.extend(rng.choice(PIECE_IDS) for _ in range(rng.randint(0, 2)))
        return out

    return [IDS["[CLS]"], *segment(), IDS["[SEP]"], *segment(), IDS["[SEP]"]]


def _draw(n=3000, whole_word_mask=False, random_tokens="ordinary", max_pred=20):
    vocab = masking.masking_vocab(VOCAB, random_tokens)
    counts = collections.Counter()
    for seed in range(n):
        rng = random.Random(seed)
        tokens = _instance(rng)
        out = masking.create_masked_lm_predictions(
            tokens,
            rng,
            vocab=vocab,
            masked_lm_prob=0.15,
            max_predictions_per_seq=max_pred,
            whole_word_mask=whole_word_mask,
            counter_inc_fn=lambda name, v=1: counts.update({name: v}),
        )
        yield tokens, out, counts


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_masking_properties(whole_word_mask):
    replaced = collections.Counter()
    for tokens, out, counts in _draw(whole_word_mask=whole_word_mask):
        pos = out.positions
        assert pos == sorted(set(pos))
        assert len(pos) <= 20
        want = min(20, max(1, round(len(tokens) * 0.15)))
        assert len(pos) <= want
        if not whole_word_mask:
            assert len(pos) == want
        assert len(out.output_ids) == len(tokens)
        # Originals recoverable, nothing else changed.
        restored = list(out.output_ids)
        for p, orig in zip(pos, out.original_ids):
            restored[p] = orig
        assert restored == tokens
        for p, orig in zip(pos, out.original_ids):
            assert orig not in SPECIAL  # no special token is ever chosen
            new = out.output_ids[p]
            if new == IDS["[MASK]"]:
                replaced["mask"] += 1
            elif new == orig:
                replaced["kept"] += 1
            else:
                replaced["random"] += 1
                assert new not in SPECIAL and new > 6  # ordinary tokens only
    total = sum(replaced.values())
    assert abs(replaced["mask"] / total - 0.8) < 0.02
    # Random draws can hit the original (counted as kept): 10% +- tolerance.
    assert abs(replaced["random"] / total - 0.1) < 0.015
    assert abs(replaced["kept"] / total - 0.1) < 0.015
    assert counts[masking.TOKENS_MASKED] == total


def test_whole_word_mask_takes_whole_words():
    vocab = masking.masking_vocab(VOCAB)
    for tokens, out, _ in _draw(n=500, whole_word_mask=True):
        chosen = set(out.positions)
        for p in range(1, len(tokens)):
            # A ## piece is chosen exactly when the token before it is
            # (unless that one is a special token such as [UNK]).
            if VOCAB[tokens[p]].startswith("##") and tokens[p - 1] not in SPECIAL:
                assert (p in chosen) == (p - 1 in chosen)
    assert vocab.continuation[47] and not vocab.continuation[7]


def test_random_tokens_any_draws_from_whole_vocab():
    seen = set()
    for tokens, out, _ in _draw(n=3000, random_tokens="any"):
        for p, orig in zip(out.positions, out.original_ids):
            new = out.output_ids[p]
            if new not in (orig, IDS["[MASK]"]):
                seen.add(new)
    assert seen & {0, 1, 6}  # bert's draw reaches [PAD]/[unused*]


def test_vocab_without_mask_token_is_refused():
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        masking.masking_vocab([t for t in VOCAB if t != "[MASK]"])


def test_batch_masking_properties_and_rates():
    import numpy as np

    vocab = masking.masking_vocab(VOCAB)
    rng = random.Random(5)
    rows = [_instance(rng) for _ in range(3000)]
    width = max(map(len, rows)) + 3
    ids = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    lengths = np.array([len(r) for r in rows])
    out, pos, orig, num = masking.create_masked_lm_predictions_batch(
        ids,
        lengths,
        np.random.default_rng(0),
        vocab=vocab,
        masked_lm_prob=0.15,
        max_predictions_per_seq=20,
    )
    replaced = collections.Counter()
    for i, row in enumerate(rows):
        m = int(num[i])
        assert m == min(20, max(1, round(len(row) * 0.15)))
        p = pos[i, :m].tolist()
        assert p == sorted(set(p)) and not pos[i, m:].any() and not orig[i, m:].any()
        assert not out[i, len(row) :].any()
        restored = out[i, : len(row)].copy()
        restored[p] = orig[i, :m]
        assert restored.tolist() == row
        for j, o in zip(p, orig[i, :m].tolist()):
            assert o not in SPECIAL
            new = int(out[i, j])
            if new == IDS["[MASK]"]:
                replaced["mask"] += 1
            elif new == o:
                replaced["kept"] += 1
            else:
                replaced["random"] += 1
                assert new > 6
    total = sum(replaced.values())
    assert abs(replaced["mask"] / total - 0.8) < 0.02
    assert abs(replaced["random"] / total - 0.1) < 0.015
    assert abs(replaced["kept"] / total - 0.1) < 0.015


def test_batch_choice_is_uniform_over_maskable_positions():
    import numpy as np

    vocab = masking.masking_vocab(VOCAB)
    row = [IDS["[CLS]"]] + list(range(7, 17)) + [IDS["[SEP]"]]
    ids = np.array([row] * 4000, np.int32)
    _, pos, _, num = masking.create_masked_lm_predictions_batch(
        ids,
        np.full(4000, len(row)),
        np.random.default_rng(1),
        vocab=vocab,
        masked_lm_prob=0.15,
        max_predictions_per_seq=5,
    )
    assert (num == 2).all()
    hits = np.bincount(pos[:, :2].ravel(), minlength=len(row))
    assert hits[0] == 0 and hits[-1] == 0
    assert hits[1:-1].min() > 0.8 * 800 and hits[1:-1].max() < 1.2 * 800
