import numpy as np
import tensorflow as tf

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
