"""The masking rule's property checks, shared by every implementation.

`configs/masking_rule.py` states the rule; four implementations follow it:
the data job's per-instance reference (`pipelines.masking.
create_masked_lm_predictions`), the data job's batch function
(`pipelines.masking.mask_instance_batch`: numpy for plain masks, the
reference per row for whole words), and `model.masking.DynamicMasker`
under the TensorFlow and JAX backends. `tests/test_masking_rule.py` runs
each CASE through each of them (`run_*` below; JAX in a subprocess via
`tests/masking_jax_worker.py`) and applies the same `check_*` functions.

Every implementation returns, for a case, numpy arrays stacked over the
case's repeats: `output_ids` `[r, n, s]`, `positions`, `labels` `[r, n, p]`
int and `weights` `[r, n, p]` float (the record features).

This module imports no TensorFlow, Beam or Keras at import time (the JAX
worker imports it).
"""

import collections
import random

import numpy as np

from configs import features, masking_rule

VOCAB = (
    ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused1]"]
    + [f"w{i}" for i in range(40)]
    + [f"##p{i}" for i in range(20)]
)
IDS = features.special_token_ids(VOCAB)
UNUSED = [VOCAB.index("[unused0]"), VOCAB.index("[unused1]")]
WORD_IDS = list(range(7, 47))
PIECE_IDS = list(range(47, 67))
SEQ, PRED = 48, 6  # long rows hit the cap: round(47 * 0.15) = 7 > 6

DEFAULT_RULE = dict(
    max_predictions_per_seq=PRED,
    masked_lm_prob=0.15,
    mask_token_prob=0.8,
    random_token_prob=0.1,
    random_tokens="ordinary",
    whole_word_mask=False,
)


def _random_rows(n, seed):
    """Rows exercising every clause of the rule: `##` pieces after words,
    after `[UNK]`/`[unusedN]`/`[CLS]`/`[SEP]`; rows with fewer selectable
    tokens than the budget, with none, and rows long enough to be capped."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 8

        def segment(max_words):
            out = []
            for _ in range(rng.randint(1, max_words)):
                r = rng.random()
                if kind == 6 or r < 0.08:
                    out.append(IDS["[UNK]"])  # mostly-[UNK] rows: budget > selectable
                elif r < 0.12:
                    out.append(rng.choice(UNUSED))
                elif r < 0.2:
                    out.append(rng.choice(PIECE_IDS))  # a piece starting a segment/word
                else:
                    out.append(rng.choice(WORD_IDS))
                out.extend(
                    rng.choice(PIECE_IDS) for _ in range(rng.choice([0, 0, 1, 2]))
                )
            return out

        if kind == 7:  # nothing selectable: no prediction at all
            row = [IDS["[CLS]"], IDS["[UNK]"], IDS["[SEP]"], IDS["[UNK]"], IDS["[SEP]"]]
        else:
            width = 14 if kind < 4 else 8
            a, b = segment(width), segment(width)
            row = [IDS["[CLS]"], *a, IDS["[SEP]"], *b, IDS["[SEP]"]][: SEQ - 1]
            row[-1] = IDS["[SEP]"]
        rows.append(row)
    return rows


def _constant_rows(row, n):
    return [list(row) for _ in range(n)]


# name -> (rule overrides, rows builder, repeats).
CASES = {
    "plain": ({}, lambda: _random_rows(256, 1), 12),
    "whole_word": ({"whole_word_mask": True}, lambda: _random_rows(256, 2), 12),
    "random_any": ({"random_tokens": "any"}, lambda: _random_rows(256, 3), 12),
    "all_random": (
        {"mask_token_prob": 0.0, "random_token_prob": 1.0},
        lambda: _random_rows(256, 4),
        4,
    ),
    # A uniform choice: one row, 2,048 draws; 10 selectable, budget 2.
    "uniform": (
        {},
        lambda: _constant_rows([IDS["[CLS]"], *range(7, 17), IDS["[SEP]"]], 256),
        8,
    ),
    # Whole words in random order: words of 1-3 pieces, budget 3.
    "whole_word_order": (
        {"whole_word_mask": True},
        lambda: _constant_rows(
            [IDS["[CLS]"], 7, 47, 8, 9, 48, 49, 10, 11, 50]
            + [IDS["[SEP]"], 12, 51, 52, 13, IDS["[UNK]"], 53, 14, 15, IDS["[SEP]"]],
            256,
        ),
        8,
    ),
}
# Every case has 256 rows of SEQ tokens, so one compiled masker per rule
# serves all the cases that share it (the JAX worker compiles 4, not 6).


def rule_kwargs(case):
    return dict(DEFAULT_RULE, **CASES[case][0])


def make_rule(case):
    return masking_rule.MaskingRule.create(VOCAB, **rule_kwargs(case))


def case_inputs(case):
    """`(original_ids [n, SEQ], lengths [n], record)`: `record` is the
    feature dict (int64 / float32 numpy) with stored masks (records are
    masked already; dynamic maskers must undo them first)."""
    rows = CASES[case][1]()
    n = len(rows)
    original = np.zeros((n, SEQ), np.int64)
    lengths = np.array([len(r) for r in rows])
    for i, row in enumerate(rows):
        original[i, : len(row)] = row
    # Stored masks: up to PRED random selectable positions -> [MASK].
    rng = np.random.RandomState(0)
    never = masking_rule.masking_vocab(VOCAB).never_chosen
    stored_ids = original.copy()
    positions = np.zeros((n, PRED), np.int64)
    labels = np.zeros((n, PRED), np.int64)
    weights = np.zeros((n, PRED), np.float32)
    for i in range(n):
        candidates = [j for j in range(lengths[i]) if not never[original[i, j]]]
        k = min(len(candidates), rng.randint(1, PRED + 1))
        chosen = np.sort(rng.choice(candidates, k, replace=False)) if k else []
        positions[i, :k] = chosen
        labels[i, :k] = original[i, chosen]
        weights[i, :k] = 1.0
        stored_ids[i, chosen] = IDS["[MASK]"]
    record = {
        features.INPUT_IDS: stored_ids,
        features.INPUT_MASK: (np.arange(SEQ) < lengths[:, None]).astype(np.int64),
        features.SEGMENT_IDS: np.zeros((n, SEQ), np.int64),
        features.MASKED_LM_POSITIONS: positions,
        features.MASKED_LM_IDS: labels,
        features.MASKED_LM_WEIGHTS: weights,
        features.NEXT_SENTENCE_LABELS: np.zeros((n, 1), np.int64),
    }
    return original, lengths, record


def _stack(results):
    return tuple(np.stack(x) for x in zip(*results))


# === Implementations ===
def run_reference(case):
    """`create_masked_lm_predictions`, one `random.Random` per row."""
    from pipelines import masking

    kwargs = rule_kwargs(case)
    vocab = masking.masking_vocab(VOCAB, kwargs.pop("random_tokens"))
    original, lengths, _ = case_inputs(case)
    results = []
    for repeat in range(CASES[case][2]):
        out = original.copy()
        positions = np.zeros((len(out), PRED), np.int64)
        labels = np.zeros_like(positions)
        weights = np.zeros(positions.shape, np.float32)
        for i, length in enumerate(lengths):
            got = masking.create_masked_lm_predictions(
                original[i, :length].tolist(),
                random.Random(repeat * 100003 + i),
                vocab=vocab,
                **kwargs,
            )
            m = len(got.positions)
            out[i, :length] = got.output_ids
            positions[i, :m] = got.positions
            labels[i, :m] = got.original_ids
            weights[i, :m] = 1.0
        results.append((out, positions, labels, weights))
    return _stack(results)


def run_data_job(case):
    """`mask_instance_batch`, what the Beam DoFn runs (numpy batch path;
    the reference per row for whole words)."""
    import types

    from pipelines import masking

    kwargs = rule_kwargs(case)
    vocab = masking.masking_vocab(VOCAB, kwargs.pop("random_tokens"))
    original, lengths, _ = case_inputs(case)
    results = []
    for repeat in range(CASES[case][2]):
        batch = types.SimpleNamespace(
            input_ids=original.astype(np.int32),
            lengths=lengths,
            num_a=np.zeros(len(lengths)),
            labels=np.zeros(len(lengths)),
            mask_seed=repeat,
        )
        got = masking.mask_instance_batch(
            batch, vocab=vocab, max_seq_length=SEQ, **kwargs
        )
        weights = (np.arange(PRED) < got.num_masked[:, None]).astype(np.float32)
        results.append((got.input_ids, got.positions, got.original_ids, weights))
    return _stack(results)


_MASK_FNS = {}


def _mask_fn(case):
    """`DynamicMasker(...).mask` for the case's rule, jitted under JAX;
    one per rule."""
    import keras

    from model.masking import DynamicMasker

    key = tuple(sorted(rule_kwargs(case).items()))
    if key not in _MASK_FNS:
        mask = DynamicMasker(VOCAB, **rule_kwargs(case)).mask
        if keras.backend.backend() == "jax":
            import jax

            mask = jax.jit(mask)
        _MASK_FNS[key] = mask
    return _MASK_FNS[key]


def run_keras(case):
    """`DynamicMasker.mask` on the current Keras backend, seeds
    `[repeat, 7]`; jitted under JAX. Returns numpy arrays."""
    from keras import ops

    _, _, record = case_inputs(case)
    dtypes = {features.MASKED_LM_WEIGHTS: "float32"}
    batch = {
        k: ops.convert_to_tensor(v.astype(dtypes.get(k, "int32")))
        for k, v in record.items()
    }
    mask = _mask_fn(case)
    results = []
    for repeat in range(CASES[case][2]):
        out = mask(batch, np.array([repeat, 7], np.int32))
        results.append(
            tuple(
                np.asarray(ops.convert_to_numpy(out[k]))
                for k in (
                    features.INPUT_IDS,
                    features.MASKED_LM_POSITIONS,
                    features.MASKED_LM_IDS,
                    features.MASKED_LM_WEIGHTS,
                )
            )
        )
    return _stack(results)


# === Property checks ===
def words(row, length, tables):
    """The rule's words of one row: lists of positions (rule 3)."""
    out = []
    for j in range(length):
        token = row[j]
        if tables.never_chosen[token]:
            continue
        if out and tables.continuation[token] and out[-1][-1] == j - 1:
            out[-1].append(j)
        else:
            out.append([j])
    return out


def chosen_mask(positions, weights, seq):
    """bool `[..., seq]`: the positions with weight > 0."""
    real = weights > 0
    mask = np.zeros(positions.shape[:-1] + (seq,), bool)
    np.put_along_axis(mask, np.where(real, positions, 0), real, axis=-1)
    # A zero-weight slot pointing at column 0 must not clear a real one.
    mask[..., 0] = (real & (positions == 0)).any(-1)
    return mask


def check_masks(case, outputs):
    """Asserts the rule's per-row properties; returns the chosen mask."""
    rule = make_rule(case)
    tables = rule.vocab
    original, lengths, _ = case_inputs(case)
    ids, positions, labels, weights = outputs
    r, n, seq = ids.shape
    real = weights > 0
    num = real.sum(-1)
    # Weights are 1.0 in the first `num` slots, then 0.0; padded slots 0.
    assert set(np.unique(weights).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(real, np.arange(PRED) < num[..., None])
    assert not positions[~real].any() and not labels[~real].any()
    # Positions unique and ascending.
    steps = np.diff(positions, axis=-1)
    assert (steps[real[..., 1:]] > 0).all()
    chosen = chosen_mask(positions, weights, seq)
    assert (chosen.sum(-1) == num).all()
    orig = np.broadcast_to(original, ids.shape)
    # Padding is never chosen, nor a never-chosen id.
    assert not (chosen & (np.arange(seq) >= lengths[:, None])).any()
    assert not (chosen & tables.never_chosen[orig]).any()
    # The labels are the originals; unchosen tokens are untouched, so the
    # originals are recoverable from (output, positions, labels).
    np.testing.assert_array_equal(
        labels[real], np.take_along_axis(orig, positions, -1)[real]
    )
    np.testing.assert_array_equal(ids[~chosen], orig[~chosen])
    restored = ids.copy()
    np.put_along_axis(restored, positions, np.where(real, labels, 0), axis=-1)
    restored[..., 0] = orig[..., 0]  # zero-weight slots wrote column 0
    np.testing.assert_array_equal(restored, orig)
    # The budget.
    budget = rule.budget_table(seq)[lengths]
    selectable = (np.arange(seq) < lengths[:, None]) & ~tables.never_chosen[original]
    if not rule.whole_word_mask:
        expected = np.minimum(budget, selectable.sum(-1))
        np.testing.assert_array_equal(num, np.broadcast_to(expected, num.shape))
    else:
        assert (num <= budget).all()
        for i in range(n):
            row_words = words(original[i], lengths[i], tables)
            for k in range(r):
                left = budget[i] - num[k, i]
                for word in row_words:
                    taken = chosen[k, i, word]
                    # Whole words only ...
                    assert taken.all() or not taken.any(), (case, k, i, word)
                    # ... and no word left out that would still fit.
                    assert taken.any() or len(word) > left, (case, k, i, word)
    return chosen


def replacement_counts(case, outputs, chosen):
    """Counter of mask / random / kept over all chosen tokens, plus the
    set of ids drawn as random replacements."""
    original, _, _ = case_inputs(case)
    ids = outputs[0]
    new = ids[chosen]
    old = np.broadcast_to(original, ids.shape)[chosen]
    mask_id = IDS["[MASK]"]
    is_mask = new == mask_id
    is_kept = (new == old) & ~is_mask
    counts = collections.Counter(
        mask=int(is_mask.sum()),
        kept=int(is_kept.sum()),
        random=int((~is_mask & ~is_kept).sum()),
    )
    return counts, set(new[~is_mask & ~is_kept].tolist())


def check_rates(case, outputs, chosen, tolerance=0.015):
    """80/10/10 (the case's rates) within `tolerance`; random draws only
    from the rule's random ids."""
    rule = make_rule(case)
    counts, drawn = replacement_counts(case, outputs, chosen)
    total = sum(counts.values())
    assert total > 1000, counts
    # A random draw equals the original with probability 1/len(random_ids).
    hit = rule.random_token_prob / len(rule.vocab.random_ids)
    expected = dict(
        mask=rule.mask_token_prob,
        random=rule.random_token_prob - hit,
        kept=1.0 - rule.mask_token_prob - rule.random_token_prob + hit,
    )
    for name, rate in expected.items():
        assert abs(counts[name] / total - rate) < tolerance, (name, counts)
        if rate == 0.0:
            assert counts[name] == 0, counts
    assert drawn <= set(rule.vocab.random_ids.tolist())
    return drawn


def word_frequencies(case, chosen):
    """For each word of the case's first row: the fraction of (repeat,
    row) draws that took it. The frequency cases repeat one row."""
    original, lengths, _ = case_inputs(case)
    row_words = words(original[0], lengths[0], make_rule(case).vocab)
    flat = chosen.reshape(-1, chosen.shape[-1])
    return np.array([flat[:, word[0]].mean() for word in row_words])


def rule_word_frequencies(case, samples=20000, seed=0):
    """The same frequencies, simulated straight from the rule's text: visit
    the words in a uniformly random order, take each one that fits."""
    rule = make_rule(case)
    original, lengths, _ = case_inputs(case)
    row_words = words(original[0], lengths[0], rule.vocab)
    budget = rule.budget(int(lengths[0]))
    rng = random.Random(seed)
    hits = np.zeros(len(row_words))
    for _ in range(samples):
        used = 0
        for k in rng.sample(range(len(row_words)), len(row_words)):
            if used + len(row_words[k]) <= budget:
                used += len(row_words[k])
                hits[k] += 1
    return hits / samples
