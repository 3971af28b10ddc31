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
def test_sentence_loss_weight_tensorflow(records_dir, tmp_path, weight, capsys):
    model_dir = str(tmp_path / "run")
    flags = tiny_flags(records_dir, model_dir, steps=2)
    pretrain.run(flags + [f"--set=pretrain.sentence_loss_weight={weight}"])
    _check_mlm_only(_metrics(model_dir), weight)
    # The console shows the sentence task's accuracy only when it is trained.
    progress = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("step ")
    ]
    assert progress and all("mlm_accuracy" in line for line in progress)
    assert all(("sentence_accuracy" in line) == (weight > 0) for line in progress)


def test_mlm_only_jax(records_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    flags = tiny_flags(records_dir, model_dir, steps=2)
    out = jax_pretrain(flags + ["--set=pretrain.sentence_loss_weight=0"])
    assert out.returncode == 0, out.stderr[-3000:]
    _check_mlm_only(_metrics(model_dir), 0.0)


def test_masking_rate_that_cannot_fit_is_one_line(records_dir, tmp_path):
    # Tiny records: 32 tokens, 5 prediction slots; 25% of 32 tokens = 8
    # (the rule's budget counts [CLS] and [SEP], as google-research/bert).
    model_dir = str(tmp_path / "run")
    flags = tiny_flags(records_dir, model_dir, masking="dynamic")
    with pytest.raises(SystemExit) as e:
        pretrain.run(flags + ["--set=data.masked_lm_prob=0.25"])
    assert str(e.value).startswith("error: data.masked_lm_prob=0.25 needs 8")
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
    assert (p.dropout, cfg.model.dropout) == (0.0, 0.1)  # the model keeps its


def _two_training_passes(flags):
    import numpy as np

    from model import pretrain_steps
    from model.bert_pretrainer import INPUT_KEYS, MLM_LOGITS
    from pretraining_records import make_examples

    cfg = pretrain.resolve_config(pretrain.parse_args(flags))
    _, pretrainer, _ = pretrain_steps.build(cfg, "float32")
    examples = make_examples(4)
    batch = {k: np.stack([e[k] for e in examples]).astype("int32") for k in INPUT_KEYS}
    return [np.asarray(pretrainer(batch, training=True)[MLM_LOGITS]) for _ in range(2)]


@pytest.mark.parametrize("dropout, same", [(0.0, True), (-1.0, False)])
def test_pretrain_dropout_is_the_encoders_while_pretraining(
    records_dir, tmp_path, dropout, same
):
    # model.dropout 0.3; pretrain.dropout 0 turns it off while pretraining
    # (two training-mode passes agree), -1 keeps the model's (they differ).
    flags = tiny_flags(records_dir, str(tmp_path / "run")) + [
        "--set=model.dropout=0.3",
        f"--set=pretrain.dropout={dropout}",
    ]
    first, second = _two_training_passes(flags)
    assert (first == second).all() == same


def test_finetuning_from_a_dropout_free_run_keeps_model_dropout(records_dir, tmp_path):
    import yaml

    from model import finetune

    run = str(tmp_path / "run")
    pretrain.run(
        tiny_flags(records_dir, run, steps=2)
        + ["--set=model.dropout=0.1", "--set=pretrain.dropout=0"]
    )
    with open(os.path.join(run, "config.yaml")) as f:
        recorded = yaml.safe_load(f)
    assert (recorded["model"]["dropout"], recorded["pretrain"]["dropout"]) == (0.1, 0)
    rows = ["sentence\tlabel", "w1 w2\t0", "w3\t1"]
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(rows) + "\n")
    args, overrides = finetune._parse_flags(
        [
            f"--train={train}",
            f"--eval={train}",
            f"--model_dir={tmp_path / 'ft'}",
            f"--init_checkpoint={run}",
            "--set=finetune.max_seq_length=16",
        ]
    )
    cfg, init, _, _ = finetune.resolve_config(args, overrides)
    assert cfg.model.dropout == 0.1
    classifier = finetune.build_classifier(cfg, init, num_classes=2)
    assert classifier.backbone.dropout == 0.1


def test_trainers_own_masking_rate_and_slots(records_dir, tmp_path):
    # Records: 5 slots at 15%; the trainer masks 35% into 12 slots (the
    # masker's output is tested in test_dynamic_masking.py).
    import yaml

    model_dir = str(tmp_path / "run")
    flags = tiny_flags(records_dir, model_dir, steps=2, masking="dynamic")
    pretrain.run(
        flags
        + [
            "--set=pretrain.masking_rate=0.35",
            "--set=pretrain.max_predictions_per_seq=12",
        ]
    )
    with open(os.path.join(model_dir, "config.yaml")) as f:
        recorded = yaml.safe_load(f)
    assert recorded["pretrain"]["masking_rate"] == 0.35
    assert recorded["pretrain"]["max_predictions_per_seq"] == 12
    assert recorded["data"]["max_predictions_per_seq"] == 5  # the records'
    assert all(r["mlm_loss"] > 0 for r in _metrics(model_dir))


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            [
                "--masking=dynamic",
                "--set=pretrain.masking_rate=0.5",
                "--set=pretrain.max_predictions_per_seq=10",
            ],
            "error: pretrain.masking_rate=0.5 needs 16 predictions for a full "
            "sequence of 32 but pretrain.max_predictions_per_seq is 10",
        ),
        (
            ["--set=pretrain.masking_rate=0.3"],
            "error: pretrain.masking_rate and pretrain.max_predictions_per_seq "
            "are dynamic masking's: pass --masking=dynamic",
        ),
        (["--budget_minutes=0.1"], "error: --budget_minutes=0.1 (6 s) is too short"),
        (
            ["--budget_minutes=5", "--strategy=multi_worker"],
            "error: --budget_minutes is timed per process",
        ),
    ],
    ids=["rate", "static", "budget", "budget_multi_worker"],
)
def test_masking_and_budget_that_cannot_work_are_one_line(
    records_dir, tmp_path, extra, message
):
    model_dir = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        pretrain.run(tiny_flags(records_dir, model_dir) + extra)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)
    assert not os.path.exists(model_dir)


def test_budget_used_up_by_compiling_says_so(capsys):
    import time

    from configs.schema import PretrainConfig
    from model.pretrain_budget import fit_budget

    p = PretrainConfig(budget_minutes=0.5, steps=10**6)
    now = time.time()
    # 25 s of the 30 gone at the probe's end, 20 of them compiling: no room.
    total, _ = fit_budget(p, now - 25, (now - 5, 3), 13, compile_seconds=20.0)
    assert total == 13
    out = capsys.readouterr().out
    assert "note: start-up and compiling used 25 s of the 30 s budget" in out
    assert "stops after the 13 timed steps" in out
    # With room left, steps are added and nothing is said.
    total, _ = fit_budget(p, now - 5, (now - 4, 0), 8, compile_seconds=1.0)
    assert total > 8 and "note:" not in capsys.readouterr().out


def test_budget_refit_moves_the_end_to_the_budget(capsys):
    from configs.schema import PretrainConfig
    from model.pretrain_budget import REFIT_AT, refit, refit_due

    p = PretrainConfig(budget_minutes=10, steps=10**6, warmup_fraction=0.1)
    t0 = 1000.0  # the run's start; 600 s of budget
    assert not refit_due(p, t0, 0, now=t0 + 0.49 * 600)
    assert refit_due(p, t0, 0, now=t0 + REFIT_AT[0] * 600)
    assert refit_due(p, t0, 1, now=t0 + REFIT_AT[1] * 600)
    assert not refit_due(p, t0, len(REFIT_AT), now=t0 + 599)
    now = t0 + 300
    # Steps timed at 1/s since t0 + 100 (step 100): the first fit's 1,000
    # steps would end at 300 + 700 + 10 s, past the 600 s: fewer steps.
    total, warmup = refit(p, t0, (t0 + 100, 100), 300, (1000, 100), 5.0, now=now)
    assert 300 < total < 600 and warmup == 100  # warm-up is over: kept
    assert "budget re-fit at 300 s: 1000 steps would end at 1010 s of 600" in (
        capsys.readouterr().out
    )
    end = 300 + (total - 300) * 1.0 + 10
    assert 0.95 * 600 < end <= 600
    # Twice the pace: more steps.
    total, _ = refit(p, t0, (t0 + 100, 100), 500, (600, 60), 5.0, now=now)
    assert total > 600
    # An end within REFIT_TOLERANCE of the budget keeps the schedule.
    assert refit(p, t0, (t0 + 100, 100), 300, (592, 60), 5.0, now=now) is None
