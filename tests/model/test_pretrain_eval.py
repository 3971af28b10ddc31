"""Held-out evaluation while pretraining (`--eval_data`), both backends.

Real runs of `model.pretrain` on tiny records: the held-out set is a second
set of records written as the data job writes them (its own metadata.json),
either beside the training records in `eval/` (what `pipelines.
pretraining_data --eval_documents` writes, found without a flag) or given
with `--eval_data`. JAX runs go through `jax_run.py` (TensorFlow blocked).
"""

import glob
import json
import os

import pytest

from model import pretrain
from pretraining_records import tiny_flags, write_records
from test_pretrain_jax import jax_pretrain

EVAL_KEYS = (
    "eval_mlm_loss",
    "eval_mlm_accuracy",
    "eval_sentence_loss",
    "eval_sentence_accuracy",
)


def _metrics(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _summary(model_dir):
    with open(os.path.join(model_dir, "pretrain_summary.json")) as f:
        return json.load(f)


def _eval_of(record):
    return {k: record[k] for k in EVAL_KEYS}


@pytest.fixture
def with_eval_dir(tmp_path):
    """Training records with 20 held-out records in `eval/` (not a multiple
    of the batch of 8: the last batch is padded)."""
    data = write_records(tmp_path / "records")
    write_records(os.path.join(data, "eval"), num=20, num_shards=1, seed=7)
    return data


def test_eval_steps_end_and_fixed_masks_tensorflow(with_eval_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    # Dynamic masks and dropout on while training: evaluation still scores
    # the records' own masks with dropout off.
    argv = tiny_flags(
        with_eval_dir, model_dir, steps=4, log_every=2, masking="dynamic"
    ) + ["--eval_every=3", "--set=model.dropout=0.3"]
    pretrain.run(argv)
    assert "held-out evaluation on " + os.path.join(with_eval_dir, "eval") in (
        capsys.readouterr().out
    )
    records = _metrics(model_dir)
    # Before training, every 3 steps, and at the end; merged into the
    # training record where a log step coincides.
    assert [r["step"] for r in records] == [0, 2, 3, 4]
    assert [r["step"] for r in records if "eval_mlm_loss" in r] == [0, 3, 4]
    assert "loss" in records[-1] and "loss" not in records[2]
    for r in records:
        if "eval_mlm_loss" in r:
            assert 0 < r["eval_mlm_loss"] < 10 and 0 <= r["eval_mlm_accuracy"] <= 1
    summary = _summary(model_dir)
    assert summary["eval"] == _eval_of(records[-1])
    assert (summary["eval_examples"], summary["step"]) == (20, 4)
    assert summary["train"]["loss"] == records[-1]["loss"]
    # TensorBoard and the plot carry them too.
    import tensorflow as tf

    (events,) = glob.glob(os.path.join(model_dir, "logs", "train", "events.*"))
    tags = {
        (e.step, v.tag)
        for e in tf.compat.v1.train.summary_iterator(events)
        for v in e.summary.value
    }
    assert {
        (0, "eval_mlm_loss"),
        (3, "eval_mlm_accuracy"),
        (4, "eval_mlm_loss"),
    } <= tags
    assert os.path.exists(os.path.join(model_dir, "metrics.png"))

    # The same weights evaluated again (a rerun of the finished run trains
    # nothing): the same numbers, to the last bit.
    pretrain.run(argv)
    assert _summary(model_dir)["eval"] == _eval_of(records[-1])
    assert [r["step"] for r in _metrics(model_dir)] == [0, 2, 3, 4]


def test_training_never_reads_the_eval_records(with_eval_dir, tmp_path):
    args = pretrain.parse_args(tiny_flags(with_eval_dir, str(tmp_path / "run")))
    cfg, files, _, _ = pretrain.check_data(pretrain.resolve_config(args), args.data)
    assert files and all(os.path.dirname(f) == with_eval_dir for f in files)
    assert cfg.pretrain.eval_data == os.path.join(with_eval_dir, "eval")


def test_eval_data_flag_batches_and_off(records_dir, tmp_path):
    held_out = write_records(tmp_path / "held_out", num=20, num_shards=1, seed=3)
    model_dir = str(tmp_path / "run")
    pretrain.run(
        tiny_flags(records_dir, model_dir, steps=2, save_every=2)
        + [f"--eval_data={held_out}", "--eval_batches=1"]
    )
    summary = _summary(model_dir)
    assert (summary["eval_data"], summary["eval_examples"]) == (held_out, 8)
    assert [r["step"] for r in _metrics(model_dir) if "eval_mlm_loss" in r] == [0, 2]
    # Sentence metrics only where the sentence head is trained; `none`
    # turns a held-out set found beside the records off.
    write_records(os.path.join(records_dir, "eval"), num=8, num_shards=1, seed=3)
    model_dir = str(tmp_path / "mlm_only")
    pretrain.run(
        tiny_flags(records_dir, model_dir, steps=2)
        + ["--set=pretrain.sentence_loss_weight=0"]
    )
    assert set(_summary(model_dir)["eval"]) == {"eval_mlm_loss", "eval_mlm_accuracy"}
    model_dir = str(tmp_path / "off")
    pretrain.run(tiny_flags(records_dir, model_dir, steps=2) + ["--eval_data=none"])
    assert not any(k.startswith("eval_") for r in _metrics(model_dir) for k in r)
    assert [r["step"] for r in _metrics(model_dir)] == [1, 2]
    assert _summary(model_dir)["eval"] is None


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda d: write_records(d, num=16, num_shards=1, seq=24),
            "records do not match the config: max_seq_length is 24 in the "
            "records, 32 here",
        ),
        (
            lambda d: write_records(d, num=16, num_shards=1, pred=4),
            "max_predictions_per_seq is 4 in the records, 5 here",
        ),
        (
            lambda d: write_records(d, num=16, num_shards=1, vocab_size=100),
            "vocab_size is 100 in the records, 120 here",
        ),
        (
            lambda d: write_records(d, num=0, num_shards=1),
            "no records: all 1 record file(s)",
        ),
        (lambda d: str(d) + "/*.tfrecord", "no record files found"),
    ],
    ids=["seq", "predictions", "vocab", "empty", "nothing"],
)
def test_eval_records_that_do_not_fit_are_one_line(
    records_dir, tmp_path, make, message
):
    held_out = make(tmp_path / "held_out")
    model_dir = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        pretrain.run(tiny_flags(records_dir, model_dir) + [f"--eval_data={held_out}"])
    assert str(e.value).startswith(f"error: --eval_data {held_out}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert not os.path.exists(model_dir)  # before anything was built


def test_eval_steps_end_and_fixed_masks_jax(with_eval_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    argv = tiny_flags(
        with_eval_dir, model_dir, steps=3, log_every=1, masking="dynamic"
    ) + ["--set=model.dropout=0.3", "--eval_every=1"]
    out = jax_pretrain(argv)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "held-out evaluation on" in out.stdout
    records = _metrics(model_dir)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all("eval_mlm_loss" in r for r in records)
    # Step 1 trains at learning rate 0 (the first step of the warm-up), so
    # its weights are step 0's: with fixed masks and dropout off (although
    # training draws masks and uses dropout 0.3) the numbers are the same,
    # to the last bit; the steps after it train, and the numbers move.
    assert records[1]["learning_rate"] == 0.0
    assert _eval_of(records[1]) == _eval_of(records[0])
    assert records[3]["eval_mlm_loss"] != records[0]["eval_mlm_loss"]
    summary = _summary(model_dir)
    assert summary["eval"] == _eval_of(records[-1])
    assert (summary["backend"], summary["eval_examples"]) == ("jax", 20)
