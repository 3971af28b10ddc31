"""`model.masking` on the TensorFlow backend: the `tf.data` map and the API.

The rule's properties are checked for this masker (under TensorFlow and
JAX) and for the data job by the same code: `tests/test_masking_rule.py`.
"""

import numpy as np
import tensorflow as tf

from configs import features
from configs.schema import DataConfig
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
    restored = restore_original_ids(batch)
    assert restored.dtype == batch["input_ids"].dtype
    np.testing.assert_array_equal(restored.numpy(), _originals(batch))


def test_tf_data_map_keeps_shapes_and_dtypes_and_draws_fresh_masks():
    examples = make_examples(64, seq=32, pred=5)
    records = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    masker = DynamicMasker(tiny_vocab(), max_predictions_per_seq=5)
    dataset = tf.data.Dataset.from_tensor_slices(records).repeat(2).batch(32)
    plain = list(dataset)
    masked = list(dataset.map(masker, num_parallel_calls=tf.data.AUTOTUNE))
    for before, after in zip(plain, masked):
        assert set(after) == set(before)
        for name, value in before.items():
            assert after[name].dtype == value.dtype, name
            assert after[name].shape == value.shape, name
        np.testing.assert_array_equal(
            restore_original_ids(after).numpy(), _originals(before)
        )
        np.testing.assert_array_equal(
            after["next_sentence_labels"], before["next_sentence_labels"]
        )
    # The same records, seen again: new masks.
    first = masked[0]["masked_lm_positions"].numpy()
    assert not np.array_equal(first, masked[2]["masked_lm_positions"].numpy())


def test_mask_is_a_pure_function_of_batch_and_seed():
    batch = _batch()
    masker = DynamicMasker.from_config(
        tiny_vocab(), DataConfig(max_predictions_per_seq=5, whole_word_mask=True)
    )
    one = masker.mask(batch, tf.constant([3, 9], tf.int32))
    again = masker.mask(batch, np.array([3, 9], np.int32))
    other = masker.mask(batch, (3, 10))
    for name in one:
        np.testing.assert_array_equal(one[name], again[name])
    assert not np.array_equal(one["input_ids"], other["input_ids"])


def test_the_maskers_own_slots_and_rate_over_the_records():
    # Records with 5 slots at 15%; the trainer masks 40% into 12 slots.
    from configs.masking_rule import budget

    batch = _batch(pred=5)
    masker = DynamicMasker(tiny_vocab(), max_predictions_per_seq=12, masked_lm_prob=0.4)
    out = masker.mask(batch, (0, 0))
    lengths = batch["input_mask"].numpy().sum(1)
    for name in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
        assert out[name].shape == (16, 12), name
    weights = out["masked_lm_weights"].numpy()
    assert list(weights.sum(1)) == [budget(n, 0.4, 12) for n in lengths]
    assert weights.sum(1).max() > 5  # more than the records' slots
    for row, n in enumerate(lengths):
        chosen = out["masked_lm_positions"].numpy()[row][weights[row] > 0]
        assert len(set(chosen)) == len(chosen) and chosen.max() < n
    np.testing.assert_array_equal(restore_original_ids(out).numpy(), _originals(batch))
