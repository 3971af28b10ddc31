"""Held-out evaluation while pretraining (`pretrain.eval_data`).

The held-out records are read once, in order (no shuffling, no repeat;
the TF-free numpy reader on both backends), into batches of the run's
global batch size, and kept in host memory: about 1.7 KB a record at
sequence 128, so 100,000 records hold ~170 MB. The last batch is padded
with copies of its first row whose weight is 0. Masks are the records'
own (the data job's static masks), even when training draws masks
dynamically, so every evaluation scores the same predictions of the same
records and its points are comparable; the encoder runs with dropout off
(`training=False`). The backend (`pretrain_steps`) returns the per-example
terms of `bert_pretrainer.pretraining_loss_terms`; here they are summed
over the whole set, so the numbers do not depend on the batch size:

- `eval_mlm_loss`: weighted token cross-entropy / masked predictions (nats)
- `eval_mlm_accuracy`: weighted correct predictions / masked predictions
- `eval_sentence_loss`, `eval_sentence_accuracy` (NSP/SOP, per example):
  only when the sentence head is trained (`sentence_loss_weight > 0`);
  an untrained head's accuracy would only be noise.
"""

import itertools
import json
import time

import numpy as np

from configs import fileio

# The run's final evaluation (and last training metrics), in model_dir.
SUMMARY_FILE = "pretrain_summary.json"
TERMS = (
    "mlm_loss_sum",
    "mlm_weight",
    "mlm_correct",
    "sentence_loss",
    "sentence_correct",
)


class HeldOutSet:
    """The held-out batches of a run, read once.

    Args:
        files: record files (checked by `pretrain_checks.check_eval_data`).
        batch_size: int, rows per batch (the run's global batch size).
        max_seq_length, max_predictions_per_seq: the records' lengths.
        max_batches: int, batches kept (0 = every record).

    Attributes: `batches` (list of feature dicts as from
    `data.numpy_pretraining_batches`, each `[batch_size, ...]`), `valid`
    (list of float32 `[batch_size]`, 1 = a record, 0 = padding) and
    `num_examples` (records evaluated).
    """

    def __init__(
        self,
        files,
        *,
        batch_size,
        max_seq_length,
        max_predictions_per_seq,
        max_batches=0,
    ):
        from model import data as data_lib

        reader = data_lib.numpy_pretraining_batches(
            files,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            max_predictions_per_seq=max_predictions_per_seq,
            seed=0,
            shuffle_buffer=0,
            repeat=False,
            drop_remainder=False,
        )
        with reader:
            read = list(itertools.islice(reader, max_batches or None))
        self.batches, self.valid = [], []
        for batch in read:
            rows = len(batch["input_ids"])
            valid = np.zeros(batch_size, np.float32)
            valid[:rows] = 1.0
            if rows < batch_size:  # one shape for every call: no recompile
                batch = {
                    k: np.concatenate([v, np.repeat(v[:1], batch_size - rows, 0)])
                    for k, v in batch.items()
                }
            self.batches.append(batch)
            self.valid.append(valid)
        self.num_examples = int(sum(v.sum() for v in self.valid))
        if not self.num_examples:
            raise ValueError("no records in the held-out set")


def load(cfg):
    """The run's `HeldOutSet`, or None without `pretrain.eval_data`."""
    from model import data as data_lib

    p = cfg.pretrain
    if p.eval_data in ("", "none"):
        return None
    return HeldOutSet(
        data_lib.list_record_files(p.eval_data),
        batch_size=p.batch_size,
        max_seq_length=cfg.data.max_seq_length,
        max_predictions_per_seq=cfg.data.max_predictions_per_seq,
        max_batches=p.eval_batches,
    )


def evaluate(runner, held_out, with_sentence=True):
    """`eval_*` metrics (dict of floats) of the runner's current weights.

    `runner.eval_terms(batch)` gives the per-example terms (numpy `[b]`
    each, dropout off); padding rows are weighted out and the terms summed
    over the set before dividing.
    """
    sums = dict.fromkeys(TERMS, 0.0)
    for batch, valid in zip(held_out.batches, held_out.valid):
        terms = runner.eval_terms(batch)
        for key in TERMS:
            sums[key] += float(np.sum(np.asarray(terms[key], np.float64) * valid))
    predictions = max(sums["mlm_weight"], 1.0)
    out = {
        "eval_mlm_loss": sums["mlm_loss_sum"] / predictions,
        "eval_mlm_accuracy": sums["mlm_correct"] / predictions,
    }
    if with_sentence:
        out["eval_sentence_loss"] = sums["sentence_loss"] / held_out.num_examples
        out["eval_sentence_accuracy"] = sums["sentence_correct"] / held_out.num_examples
    return out


def format_line(step, metrics, held_out, seconds):
    """One console line of an evaluation."""
    parts = [f"eval step {step}"]
    parts += [f"{k} {v:.4f}" for k, v in metrics.items()]
    parts.append(f"{held_out.num_examples} records, {seconds:.1f} s")
    return " | ".join(parts)


def write_summary(
    model_dir, *, step, steps, started, train_metrics, eval_metrics, cfg, held_out
):
    """`model_dir/pretrain_summary.json` (written last, atomically)."""
    summary = {
        "step": int(step),
        "steps": int(steps),
        "seconds": round(time.time() - started, 1),
        "backend": cfg.pretrain.backend,
        "train": train_metrics or None,
        "eval": eval_metrics,
        "eval_data": cfg.pretrain.eval_data if held_out is not None else None,
        "eval_examples": held_out.num_examples if held_out is not None else 0,
    }
    path = fileio.join(model_dir, SUMMARY_FILE)
    fileio.write_atomic(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path
