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
