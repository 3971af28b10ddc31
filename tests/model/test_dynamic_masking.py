import numpy as np
import tensorflow as tf

from configs import features
from model.masking import DynamicMasker, restore_original_ids
from pretraining_records import make_examples, tiny_vocab


def _batch(num=16, seq=32, pred=5):
    examples = make_examples(num, seq=seq, pred=pred)
    return {k: tf.constant(np.stack([e[k] for e in examples])) for k in examples[0]}


def _originals(batch):
    ids = batch["input_ids"].numpy().copy()
    for row, (pos, orig, w) in enumerate(
        zip(
            batch["masked_lm_positions"].numpy(),
            batch["masked_lm_ids"].numpy(),
            batch["masked_lm_weights"].numpy(),
        )
    ):
        ids[row, pos[w > 0]] = orig[w > 0]
    return ids


def test_restore_original_ids():
    batch = _batch()
    np.testing.assert_array_equal(
        restore_original_ids(batch).numpy(), _originals(batch)
    )


def test_fresh_masks_each_call_with_the_configured_rates():
    vocab = tiny_vocab()
    masker = DynamicMasker(vocab, max_predictions_per_seq=5, masked_lm_prob=0.15)
    batch = _batch()
    original = _originals(batch)
    first, second = masker(batch), masker(batch)
    # Different positions from one call to the next ...
    assert not np.array_equal(
        first["masked_lm_positions"].numpy(), second["masked_lm_positions"].numpy()
    )
    for out in (first, second):
        ids = out["input_ids"].numpy()
        pos = out["masked_lm_positions"].numpy()
        w = out["masked_lm_weights"].numpy()
        lengths = batch["input_mask"].numpy().sum(1)
        for row in range(len(ids)):
            chosen = pos[row][w[row] > 0]
            # ... the same rate: ceil(15% of the selectable tokens), capped.
            selectable = lengths[row] - 3  # minus [CLS] and two [SEP]
            assert len(chosen) == min(5, int(np.ceil(0.15 * selectable)))
            assert len(set(chosen)) == len(chosen)
            # [CLS], [SEP] and padding are never chosen.
            assert all(original[row, p] not in (0, 2, 3) for p in chosen)
            # labels are the originals; unchosen tokens are untouched.
            np.testing.assert_array_equal(
                out["masked_lm_ids"].numpy()[row][w[row] > 0], original[row, chosen]
            )
            others = np.setdiff1d(np.arange(len(ids[row])), chosen)
            np.testing.assert_array_equal(ids[row, others], original[row, others])
        assert out["input_ids"].dtype == batch["input_ids"].dtype
        assert out["masked_lm_weights"].dtype == tf.float32


def test_degenerate_rates_are_exact():
    vocab = tiny_vocab()
    batch = _batch()
    all_mask = DynamicMasker(
        vocab, max_predictions_per_seq=5, mask_token_prob=1.0, random_token_prob=0.0
    )(batch)
    pos, w = (
        all_mask["masked_lm_positions"].numpy(),
        all_mask["masked_lm_weights"].numpy(),
    )
    ids = all_mask["input_ids"].numpy()
    assert all((ids[r, pos[r][w[r] > 0]] == 4).all() for r in range(len(ids)))
    random = DynamicMasker(
        vocab, max_predictions_per_seq=5, mask_token_prob=0.0, random_token_prob=1.0
    )(batch)
    pos, w = random["masked_lm_positions"].numpy(), random["masked_lm_weights"].numpy()
    ids = random["input_ids"].numpy()
    drawn = np.concatenate([ids[r, pos[r][w[r] > 0]] for r in range(len(ids))])
    # Random replacements are ordinary tokens, never [PAD]/[CLS]/[MASK]/...
    assert (drawn >= 6).all()


# === Whole-word masking ===
def _wwm_vocab():
    """tiny_vocab with every third ordinary token a `##` piece."""
    vocab = tiny_vocab()
    return [
        t if features.is_special_token(t) or i % 3 else f"##{t}"
        for i, t in enumerate(vocab)
    ]


def _words(ids, length, vocab):
    """Lists of positions, one per word, by the data job's rule."""
    never = {features.PAD, features.UNK, features.CLS, features.SEP, features.MASK}
    words = []
    for i in range(length):
        token = vocab[ids[i]]
        if token in never:
            continue
        if words and token.startswith("##") and words[-1][-1] == i - 1:
            words[-1].append(i)
        else:
            words.append([i])
    return words


def test_whole_word_masks_choose_whole_words_within_the_budget():
    vocab = _wwm_vocab()
    pred = 8
    batch = _batch(num=64, seq=48, pred=pred)
    original = _originals(batch)
    lengths = batch["input_mask"].numpy().sum(1)
    masker = DynamicMasker(
        vocab, max_predictions_per_seq=pred, masked_lm_prob=0.15, whole_word_mask=True
    )
    counts, targets = [], []
    replaced = {"mask": 0, "random": 0, "kept": 0}
    for _ in range(20):
        out = masker(batch)
        ids = out["input_ids"].numpy()
        pos, w = out["masked_lm_positions"].numpy(), out["masked_lm_weights"].numpy()
        labels = out["masked_lm_ids"].numpy()
        for row in range(len(ids)):
            chosen = pos[row][w[row] > 0]
            target = min(pred, max(1, int(round(lengths[row] * 0.15))))
            assert len(chosen) <= target
            counts.append(len(chosen))
            targets.append(target)
            # Sorted, unique, never a special token or padding.
            assert (np.diff(chosen) > 0).all()
            assert all(
                not features.is_special_token(vocab[original[row, p]]) for p in chosen
            )
            # Whole words only: each word is chosen entirely or not at all.
            chosen_set = set(chosen.tolist())
            for word in _words(original[row], lengths[row], vocab):
                assert set(word) <= chosen_set or not set(word) & chosen_set
            # Originals are the labels; unchosen tokens are untouched.
            np.testing.assert_array_equal(
                labels[row][w[row] > 0], original[row, chosen]
            )
            others = np.setdiff1d(np.arange(ids.shape[1]), chosen)
            np.testing.assert_array_equal(ids[row, others], original[row, others])
            new = ids[row, chosen]
            replaced["mask"] += int((new == 4).sum())
            replaced["kept"] += int((new == original[row, chosen]).sum())
            replaced["random"] += int(
                ((new != 4) & (new != original[row, chosen])).sum()
            )
    # Skipping words that overshoot fills nearly the whole budget.
    assert np.mean(counts) >= 0.9 * np.mean(targets)
    total = sum(replaced.values())
    # 80/10/10 (a random draw may equal the original: "kept" is a bit over).
    assert abs(replaced["mask"] / total - 0.8) < 0.03
    assert abs(replaced["random"] / total - 0.1) < 0.03
    assert abs(replaced["kept"] / total - 0.1) < 0.03


def test_whole_word_masks_differ_per_call_and_cover_every_word():
    vocab = _wwm_vocab()
    batch = _batch(num=4, seq=32, pred=5)
    original = _originals(batch)
    masker = DynamicMasker(vocab, max_predictions_per_seq=5, whole_word_mask=True)
    seen = [set() for _ in range(4)]
    for _ in range(200):
        out = masker(batch)
        pos, w = out["masked_lm_positions"].numpy(), out["masked_lm_weights"].numpy()
        for row in range(4):
            seen[row] |= set(pos[row][w[row] > 0].tolist())
    lengths = batch["input_mask"].numpy().sum(1)
    for row in range(4):
        # Over many calls every word that fits the budget gets chosen.
        fits = [
            word
            for word in _words(original[row], lengths[row], vocab)
            if len(word) <= min(5, max(1, int(round(lengths[row] * 0.15))))
        ]
        assert set().union(*map(set, fits)) <= seen[row]
