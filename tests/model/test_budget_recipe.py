"""The budget recipe (`configs/pretrain/budget.yaml`) and its knobs.

Each knob is tested for what it changes in a real run: the MLM-only mode
on both backends (JAX through `jax_run.py`, TensorFlow blocked), the
masking-rate check before any work, and the recipe's composition with a
size config.
"""

import json
import os

import pytest

from model import pretrain
from pretraining_records import tiny_flags
from test_pretrain_jax import jax_pretrain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _check_mlm_only(records, weight):
    for r in records:
        # The sentence head still predicts (NSP records are read) ...
        assert r["sentence_loss"] > 0.1
        # ... but only `weight` of its loss is trained on.
        expected = r["mlm_loss"] + weight * r["sentence_loss"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_sentence_loss_weight_tensorflow(records_dir, tmp_path, weight):
    model_dir = str(tmp_path / "run")
    flags = tiny_flags(records_dir, model_dir, steps=2)
    pretrain.run(flags + [f"--set=pretrain.sentence_loss_weight={weight}"])
    _check_mlm_only(_metrics(model_dir), weight)


def test_mlm_only_jax(records_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    flags = tiny_flags(records_dir, model_dir, steps=2)
    out = jax_pretrain(flags + ["--set=pretrain.sentence_loss_weight=0"])
    assert out.returncode == 0, out.stderr[-3000:]
    _check_mlm_only(_metrics(model_dir), 0.0)


def test_masking_rate_that_cannot_fit_is_one_line(records_dir, tmp_path):
    # Tiny records: 32 tokens, 5 prediction slots; 25% of 29 real tokens = 7.
    model_dir = str(tmp_path / "run")
    flags = tiny_flags(records_dir, model_dir, masking="dynamic")
    with pytest.raises(SystemExit) as e:
        pretrain.run(flags + ["--set=data.masked_lm_prob=0.25"])
    assert str(e.value).startswith("error: data.masked_lm_prob=0.25 needs 7")
    assert "\n" not in str(e.value)
    assert not os.path.exists(model_dir)


def test_recipe_composes_with_a_size_config(records_dir, tmp_path):
    args = pretrain.parse_args(
        [
            "--config=pretrain/bert_mini.yaml",
            f"--config={REPO}/configs/pretrain/budget.yaml",
            "--budget_minutes=5",
            f"--data={records_dir}",
            f"--model_dir={tmp_path}",
        ]
    )
    cfg = pretrain.resolve_config(args)
    assert cfg.model.hidden_dim == 256  # the size config's
    p = cfg.pretrain
    assert p.learning_rate == 1e-3  # the recipe's, over bert_mini's 2e-4
    assert (p.sentence_loss_weight, p.masking) == (0.0, "dynamic")
    assert (p.warmup_fraction, p.clipnorm, p.beta_2) == (0.1, 0.5, 0.98)
    assert p.budget_minutes == 5
