"""One masking rule (`configs/masking_rule.py`), every implementation.

The same property checks (`masking_properties.py`) run against the data
job's per-instance reference, its batch function (what the Beam DoFn
runs), and `model.masking.DynamicMasker` under TensorFlow (in process) and
under JAX (jitted, in a subprocess with TensorFlow unimportable).
"""

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import masking_rule
import masking_properties as props

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
IMPLEMENTATIONS = ("reference", "data_job", "keras_tensorflow", "keras_jax")
RANDOM_CASES = ("plain", "whole_word", "random_any", "all_random")
FREQUENCY_CASES = ("uniform", "whole_word_order")


@pytest.fixture(scope="module")
def jax_outputs(tmp_path_factory):
    """Every case's outputs from the keras.ops masker under JAX."""
    path = str(tmp_path_factory.mktemp("jax_masks") / "masks.npz")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([REPO, TESTS]),
    )
    done = subprocess.run(
        [sys.executable, os.path.join(TESTS, "masking_jax_worker.py"), path],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(path) as data:
        return {
            case: tuple(data[f"{case}/{i}"] for i in range(4)) for case in props.CASES
        }


@functools.lru_cache(maxsize=None)
def _in_process(impl, case):
    run = {
        "reference": props.run_reference,
        "data_job": props.run_data_job,
        "keras_tensorflow": props.run_keras,
    }[impl]
    return run(case)


@pytest.fixture
def masks(request):
    def get(impl, case):
        if impl == "keras_jax":
            return request.getfixturevalue("jax_outputs")[case]
        return _in_process(impl, case)

    return get


@pytest.mark.parametrize("case", RANDOM_CASES)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_masks_follow_the_rule(impl, case, masks):
    outputs = masks(impl, case)
    chosen = props.check_masks(case, outputs)
    drawn = props.check_rates(case, outputs, chosen)
    if case == "random_any":
        # bert's draw over the whole vocabulary reaches control tokens.
        never = props.make_rule(case).vocab.never_chosen
        assert any(never[i] for i in drawn)


@pytest.mark.parametrize("case", FREQUENCY_CASES)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_choice_frequencies_match_the_rule(impl, case, masks):
    outputs = masks(impl, case)
    chosen = props.check_masks(case, outputs)
    got = props.word_frequencies(case, chosen)
    want = props.rule_word_frequencies(case)
    # 2,048 draws: one standard deviation is at most 0.011.
    np.testing.assert_allclose(got, want, atol=0.045)


def test_keras_masker_draws_the_same_masks_on_both_backends(jax_outputs):
    for case in props.CASES:
        for tf_out, jax_out in zip(
            _in_process("keras_tensorflow", case), jax_outputs[case]
        ):
            np.testing.assert_array_equal(tf_out, jax_out, err_msg=case)


# === The rule's own tables ===
def test_budget_is_pythons_round_capped_and_at_least_one():
    rule = masking_rule.MaskingRule.create(
        props.VOCAB, max_predictions_per_seq=76, masked_lm_prob=0.15
    )
    table = rule.budget_table(512)
    assert table.dtype == np.int32 and table.shape == (513,)
    assert table[0] == table[1] == 1  # at least one
    assert rule.budget(30) == 4  # round(4.5): half to even
    # float32 would give 29 here (28.500002); the table holds float64's 28.
    assert rule.budget(190) == round(190 * 0.15) == 28
    assert table.tolist() == [min(76, max(1, round(n * 0.15))) for n in range(513)]
    assert table.max() == 76  # capped at max_predictions_per_seq


def test_never_chosen_ids_are_every_bracketed_token():
    tokens = props.VOCAB + ["[", "]", "[]", "[foo]"]
    vocab = masking_rule.masking_vocab(tokens)
    never = [t for t, n in zip(tokens, vocab.never_chosen) if n]
    assert never == [
        "[PAD]",
        "[unused0]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[unused1]",
        "[foo]",
    ]
    # Ordinary random replacements are exactly the selectable tokens.
    assert vocab.random_ids.tolist() == np.flatnonzero(~vocab.never_chosen).tolist()
    assert tokens[vocab.mask_id] == "[MASK]"
    assert vocab.continuation.tolist() == [t.startswith("##") for t in tokens]


def test_rule_from_data_config_and_bad_settings():
    from configs.schema import DataConfig

    rule = masking_rule.MaskingRule.from_config(
        props.VOCAB, DataConfig(whole_word_mask=True, random_tokens="any")
    )
    assert rule.whole_word_mask and len(rule.vocab.random_ids) == len(props.VOCAB)
    assert rule.replacement_thresholds(24) == (13421773, 15099494)
    with pytest.raises(ValueError, match="random_tokens"):
        masking_rule.masking_vocab(props.VOCAB, "bracketed")
    with pytest.raises(ValueError, match="masked_lm_prob"):
        masking_rule.MaskingRule.create(
            props.VOCAB, max_predictions_per_seq=5, masked_lm_prob=1.5
        )
    with pytest.raises(ValueError, match="no ordinary tokens"):
        masking_rule.masking_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
