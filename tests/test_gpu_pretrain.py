"""The GPU pretraining benchmark's data format and JAX dynamic masking.

`benchmarks/gpu_pretrain.py` runs under `KERAS_BACKEND=jax` (the GPU image
has no TensorFlow), so these tests need jax and are skipped where it is
not installed (the project's `.venv`). Run them with a JAX environment:
`KERAS_BACKEND=jax PYTHONPATH=. python -m pytest -q tests/test_gpu_pretrain.py`.
"""

import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")
if os.environ.get("KERAS_BACKEND", "jax") != "jax":
    pytest.skip("needs KERAS_BACKEND=jax", allow_module_level=True)

from benchmarks import gpu_pretrain  # noqa: E402
from benchmarks.gpu_pretrain_data import pack  # noqa: E402
from configs import features  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]"] + [
    f"w{i}" for i in range(40)
]
SPECIAL = features.special_token_ids(VOCAB)
ORDINARY = np.array(
    [i for i, t in enumerate(VOCAB) if not features.is_special_token(t)], np.int32
)


def _batch(rng, rows=64, seq=32):
    """Original ids `[CLS] A [SEP] B [SEP]` + padding, and lengths."""
    lengths = rng.integers(5, seq + 1, size=rows).astype(np.int32)
    ids = np.zeros((rows, seq), np.int32)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.choice(ORDINARY, size=n)
        a = rng.integers(2, n - 1)
        ids[r, 0], ids[r, a], ids[r, n - 1] = (
            SPECIAL["[CLS]"],
            SPECIAL["[SEP]"],
            SPECIAL["[SEP]"],
        )
    return ids, lengths


def _mask(ids, lengths, seed=0, **rates):
    out = gpu_pretrain.dynamic_mask(
        jax.random.key(seed),
        jax.numpy.asarray(ids),
        jax.numpy.asarray(lengths),
        ordinary_ids=jax.numpy.asarray(ORDINARY),
        special=SPECIAL,
        max_predictions=5,
        **rates,
    )
    return {k: np.asarray(v) for k, v in out.items()}


def test_dynamic_mask_properties():
    ids, lengths = _batch(np.random.default_rng(0))
    out = _mask(ids, lengths)
    for r in range(len(ids)):
        real = out["masked_lm_weights"][r] > 0
        positions = out["masked_lm_positions"][r][real]
        selectable = int(np.sum(ids[r, : lengths[r]] > SPECIAL["[MASK]"]))
        assert real.sum() == min(5, max(1, round(selectable * 0.15)))
        assert len(set(positions)) == len(positions)
        assert np.all(positions < lengths[r])
        # Never [CLS], [SEP] or padding.
        assert np.all(np.isin(ids[r, positions], ORDINARY))
        np.testing.assert_array_equal(out["masked_lm_ids"][r][real], ids[r, positions])
        assert np.all(out["masked_lm_ids"][r][~real] == 0)
        assert np.all(out["masked_lm_positions"][r][~real] == 0)
        # Outside the chosen positions the sequence is unchanged.
        untouched = np.ones(ids.shape[1], bool)
        untouched[positions] = False
        np.testing.assert_array_equal(out["input_ids"][r][untouched], ids[r][untouched])
        assert np.all(
            np.isin(out["input_ids"][r, positions], ORDINARY)
            | (out["input_ids"][r, positions] == SPECIAL["[MASK]"])
        )


def test_dynamic_mask_rates_and_fresh_draws():
    ids, lengths = _batch(np.random.default_rng(1), rows=512)
    masked = _mask(ids, lengths, mask_token_prob=1.0, random_token_prob=0.0)
    real = masked["masked_lm_weights"] > 0
    chosen = np.take_along_axis(masked["input_ids"], masked["masked_lm_positions"], 1)
    assert np.all(chosen[real] == SPECIAL["[MASK]"])
    kept = _mask(ids, lengths, mask_token_prob=0.0, random_token_prob=0.0)
    np.testing.assert_array_equal(kept["input_ids"], ids)
    default = _mask(ids, lengths)
    chosen = np.take_along_axis(default["input_ids"], default["masked_lm_positions"], 1)
    share_mask = np.mean(chosen[default["masked_lm_weights"] > 0] == SPECIAL["[MASK]"])
    assert 0.75 < share_mask < 0.85
    other_seed = _mask(ids, lengths, seed=1)
    assert not np.array_equal(
        other_seed["masked_lm_positions"], default["masked_lm_positions"]
    )


def test_pack_then_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    ids, lengths = _batch(rng, rows=50, seq=16)
    a_lengths = rng.integers(2, 5, size=50).astype(np.int32)
    nsp = rng.integers(0, 2, size=50).astype(np.int32)
    vocab_bytes = ("\n".join(VOCAB) + "\n").encode()
    meta = {"max_seq_length": 16, "dupe_factor": 1}
    path = pack(
        ids, lengths, a_lengths, nsp, vocab_bytes, meta, str(tmp_path / "p.npz")
    )
    got = gpu_pretrain.load_sequences(path)
    np.testing.assert_array_equal(got[0], ids)
    np.testing.assert_array_equal(got[1], lengths)
    np.testing.assert_array_equal(got[2], a_lengths)
    np.testing.assert_array_equal(got[3], nsp)
    assert got[4] == vocab_bytes and got[5] == meta


def test_batch_order_covers_every_row_each_epoch():
    order = gpu_pretrain.BatchOrder(10, seed=0)
    rows = order.next(5, 4).ravel()  # 20 rows: exactly two epochs
    assert sorted(rows[:10]) == list(range(10))
    assert sorted(rows[10:]) == list(range(10))
    assert order.epochs == 2
