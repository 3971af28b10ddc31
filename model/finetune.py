"""Fine-tune a BERT encoder for sentence (pair) classification.

    python -m model.finetune --config=configs/finetune/sst2.yaml \\
        --train=train.tsv --eval=dev.tsv --model_dir=out/sst2 \\
        [--init_checkpoint=out/pretrain] [--epochs=3 --batch_size=32
        --learning_rate=auto --seed=0 --seeds=1 --max_steps=0]
        [--vocab=vocab.txt] [--set section.key=value ...]

`--train`/`--eval` take a raw labelled file (TSV with quoting off, CSV,
JSONL; header names the columns) or a directory of classification records
from `pipelines.classification_data` (its metadata.json is checked against
the model before any work).

`--init_checkpoint` takes our pretraining `model_dir` (its `config.yaml`
gives the model sizes and casing, its `encoder.weights.h5` the weights), a
fine-tuning `model_dir` (its encoder; the classification layer is new), a
Hugging Face BERT directory (`config.json` + `model.safetensors`, sizes,
activation and casing from its config; its `vocab.txt` or `tokenizer.json`)
or a Google TF1 checkpoint (prefix, or the directory holding it and
`vocab.txt`); see `model.checkpoints`. Without it the encoder starts from
random weights, and the run says so. A `--vocab` that is not the
checkpoint's own vocabulary (compared token by token) is refused.
`finetune.pooling: auto` takes a sentence-transformers checkpoint's mean
pooling from its `1_Pooling/config.json`, mean for a run of ours pretrained
MLM-only (its [CLS] was never trained), else BERT's `cls`.

Recipe (google-research/bert `run_classifier.py`): dropout + dense on the
pooled `[CLS]` vector, AdamW with linear warm-up (`warmup_proportion` of
the steps) and linear decay, no weight decay on LayerNorm and biases,
gradient clipping at global norm 1. Training runs in bf16 where the hardware
has it (`finetune.precision: auto`; float32 weights) on batches of similar
length trimmed to their longest row (`finetune.group_by_length`): 2.3x the
float32 fixed-padding speed on SST-2 (`benchmarks/finetune_throughput.py`).
Each epoch is evaluated (accuracy and
macro-F1); the best epoch's weights are kept. `--seeds=N` repeats the run
with seeds `seed..seed+N-1` (in `model_dir/seed_K/`) and reports mean ± std
(USERS.md #8); the best run is copied to `model_dir`.

`model_dir` then holds what `model.export` needs: `config.yaml` (labels,
casing, sequence length, model sizes), `vocab.txt`, `best.weights.h5`,
plus `eval_metrics.json`, `metrics.jsonl` and `dead_letter_{train,eval}.jsonl`.
Every path may be local or remote (`gs://`, `ram://`; `configs.fileio`).

Bad rows are set aside into the dead-letter files and counted; more than
`--max_bad_fraction` (default 10%) of a file's rows bad stops the run with
one line naming the setting to change (`finetune.labels` when the labels
are the problem). Every flag, path, config and data problem is one
`error:` line, exit 2, before training starts.

`run` reads top to bottom: resolve the config -> prepare the data
(`text_data.prepare_data`) -> per seed: build, train, evaluate -> write.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from configs import features, fileio, output_lock
from configs.cli import (
    add_overwrite_flag,
    flag_help,
    program_name,
    quiet_tensorflow_logs,
)
from configs.loader import RESOLVED_CONFIG_FILE, dump_config, load_config
from configs.loader import load_resolved
from configs.schema import ConfigError, FinetuneConfig, finetune_learning_rate

BEST_WEIGHTS_FILE = "best.weights.h5"
VOCAB_FILE = "vocab.txt"
EVAL_METRICS_FILE = "eval_metrics.json"
METRICS_LOG_FILE = "metrics.jsonl"
EVAL_BATCH_SIZE = 256


# === Flags and config ===
# Flags that are shorthands for `--set finetune.<name>=<value>`.
FINETUNE_FLAGS = {
    "epochs": int,
    "batch_size": int,
    "learning_rate": str,  # auto or a number, checked by the schema
    "seed": int,
    "seeds": int,
    "max_steps": int,
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        raise ConfigError(message)


def _parse_flags(argv):
    from configs.labelled_text import DEFAULT_MAX_BAD_FRACTION

    parser = _Parser(
        prog=program_name("model.finetune"),
        allow_abbrev=False,
        description="Fine-tune BERT for sentence classification.",
    )
    add = parser.add_argument
    add(
        "--config",
        action="append",
        default=[],
        help="YAML config (repeatable), e.g. configs/finetune/sst2.yaml; "
        "without one the labels are learned from --train",
    )
    add(
        "--train",
        required=True,
        help="labelled TSV/CSV (with a header) or JSONL file, or a "
        "pipelines.classification_data records directory",
    )
    add("--eval", required=True, help="the same kinds as --train; evaluated each epoch")
    add(
        "--model_dir",
        required=True,
        help="output: best.weights.h5, eval_metrics.json, metrics.jsonl, config.yaml",
    )
    add(
        "--init_checkpoint",
        default="",
        help="encoder to start from: our pretraining/fine-tuning model_dir, a "
        "Hugging Face BERT directory or a TF1 BERT checkpoint (sizes, vocab, "
        "casing from it) (default: random init)",
    )
    add("--vocab", default="", help="vocab.txt (default: the checkpoint's)")
    add(
        "--labels",
        default="",
        help="comma-separated label values in id order (default: the config's "
        "finetune.labels, else learned from --train) (= --set finetune.labels=[...])",
    )
    for name in ("text_column", "label_column"):
        add(f"--{name}", help=flag_help(FinetuneConfig, name))
    for name, kind in FINETUNE_FLAGS.items():
        add(f"--{name}", type=kind, help=flag_help(FinetuneConfig, name))
    add(
        "--max_bad_fraction",
        type=float,
        default=DEFAULT_MAX_BAD_FRACTION,
        help="stop when more than this fraction of a file's rows is bad "
        f"(default {DEFAULT_MAX_BAD_FRACTION}); 1 accepts any number",
    )
    add(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config field, e.g. --set finetune.pooling=mean "
        "(applied last; repeatable)",
    )
    add("--quiet", action="store_true", help="no per-step lines")
    add_overwrite_flag(
        add, "replace a finished run (one with eval_metrics.json) in --model_dir"
    )
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unknown flag(s): {' '.join(unknown)}")
    if not 0 <= args.max_bad_fraction <= 1:
        raise ConfigError(
            f"--max_bad_fraction must be in [0, 1], got {args.max_bad_fraction}"
        )
    if fileio.isfile(args.model_dir):
        raise ConfigError(f"--model_dir {args.model_dir} is a file, not a directory")
    overrides = [
        f"finetune.{name}={getattr(args, name)}"
        for name in FINETUNE_FLAGS
        if getattr(args, name) is not None
    ]
    # Strings go through JSON: YAML would read "false" or "1" otherwise.
    overrides += [
        f"finetune.{name}={json.dumps(getattr(args, name))}"
        for name in ("text_column", "label_column")
        if getattr(args, name) is not None
    ]
    if args.labels:
        labels = [v.strip() for v in args.labels.split(",") if v.strip()]
        overrides.append(f"finetune.labels={json.dumps(labels)}")
    return args, overrides + list(args.set)


@dataclasses.dataclass
class _Init:
    """Where the encoder comes from."""

    kind: str  # "random", "ours", "google" or "huggingface"
    path: str = ""
    vocab: str = ""  # vocab file found beside the checkpoint
    checkpoint: object = None  # the `model.checkpoints.Checkpoint`


_INIT_KINDS = {
    "pretraining": "ours",
    "finetuned": "ours",
    "tf1": "google",
    "huggingface": "huggingface",
}


def _resolve_init(path: str) -> _Init:
    """`--init_checkpoint` -> `_Init`; every format `model.checkpoints`
    reads (one line, exit 2, for anything else: a data directory, another
    architecture, a damaged file)."""
    if not path:
        return _Init("random")
    from model import checkpoints

    ckpt = checkpoints.inspect(path)
    return _Init(_INIT_KINDS[ckpt.kind], ckpt.path, ckpt.vocab_path, ckpt)


def _checkpoint_vocab_file(init):
    """A vocab.txt for a checkpoint whose tokens come from tokenizer.json
    alone: written to a temporary directory (the run copies it into
    `model_dir` once the checks have passed)."""
    ckpt = init.checkpoint
    if ckpt is None or init.vocab or not ckpt.vocab:
        return init.vocab
    path = os.path.join(fileio.scratch_dir("vocab-"), VOCAB_FILE)
    fileio.write_atomic(path, "\n".join(ckpt.vocab) + "\n")
    ckpt.vocab_path = path
    return path


def _resolve_pooling(cfg, init):
    """`finetune.pooling: auto` -> the checkpoint's (sentence-transformers'
    1_Pooling says mean; our MLM-only pretraining runs get mean), else
    BERT's cls."""
    pooling = cfg.finetune.pooling
    source = "finetune.pooling"
    if pooling == "auto":
        ckpt = init.checkpoint
        pooling, source = "cls", "BERT's default"
        if ckpt is not None and ckpt.pooling:
            pooling, source = ckpt.pooling, f"{ckpt.path}'s 1_Pooling/config.json"
        elif init.kind == "ours":
            run = load_resolved(init.path)
            recorded = run.finetune.pooling
            if recorded != "auto" and ckpt.kind == "finetuned":
                pooling, source = recorded, f"{init.path}/config.yaml"
            elif ckpt.kind == "pretraining" and run.pretrain.sentence_loss_weight == 0:
                # MLM-only pretraining never trains [CLS] (nor the pooler)
                # for anything: its output collapses to nearly one vector
                # for every input (std ~1e-3 against a norm ~10, measured),
                # which a classifier on it starts from as if from nothing.
                # Mean pooling reads the tokens MLM did train.
                pooling = "mean"
                source = (
                    f"{init.path} was pretrained MLM-only "
                    "(pretrain.sentence_loss_weight: 0), so its [CLS] is untrained"
                )
    print(f"pooling: {pooling} ({source})")
    return cfg.replace(finetune=dataclasses.replace(cfg.finetune, pooling=pooling))


def resolve_config(args, overrides):
    """Returns (cfg, init, vocab list, vocab path) before any data is read."""
    cfg = load_config(args.config, overrides)
    init = _resolve_init(args.init_checkpoint)
    if init.kind == "ours":
        # The encoder's sizes and casing are the checkpoint's, not the YAML's.
        ckpt = load_resolved(init.path)
        # The data section (casing, vocabulary) describes the same records.
        cfg = cfg.replace(model=ckpt.model, data=ckpt.data)
        print(f"model config from {fileio.join(init.path, RESOLVED_CONFIG_FILE)}")
    elif init.kind in ("google", "huggingface"):
        ckpt = init.checkpoint
        # data.max_seq_length describes pretraining records, none here: kept
        # within the checkpoint's position table.
        data = dataclasses.replace(
            cfg.data,
            max_seq_length=min(
                cfg.data.max_seq_length, ckpt.model_config.max_sequence_length
            ),
        )
        cfg = cfg.replace(model=ckpt.model_config, data=data)
        if ckpt.do_lower_case is not None:
            cfg = cfg.replace(
                data=dataclasses.replace(cfg.data, do_lower_case=ckpt.do_lower_case)
            )
        print(f"model config from {ckpt.description}")
    if init.kind != "random":
        cfg = _resolve_pooling(cfg, init)
    vocab_path = args.vocab or _checkpoint_vocab_file(init) or cfg.data.vocab_file
    if init.kind == "ours" and not args.vocab and not init.vocab and vocab_path:
        if not os.path.isabs(vocab_path) and not fileio.is_remote(vocab_path):
            beside = fileio.join(init.path, vocab_path)
            vocab_path = beside if fileio.exists(beside) else vocab_path
    if not vocab_path:
        raise ConfigError(
            "no vocabulary: pass --vocab=FILE (or an --init_checkpoint with one)"
        )
    if not fileio.isfile(vocab_path):
        raise ConfigError(f"vocabulary {vocab_path} does not exist")
    vocab = features.read_vocab(vocab_path)
    features.special_token_ids(vocab)
    if args.vocab and init.checkpoint is not None:
        from model import checkpoints

        checkpoints.check_vocab(init.checkpoint, vocab, vocab_path)
    if init.kind == "random" and cfg.model.vocabulary_size != len(vocab):
        # A fresh encoder gets exactly one embedding row per vocabulary token.
        cfg = cfg.replace(
            model=dataclasses.replace(cfg.model, vocabulary_size=len(vocab))
        )
    elif cfg.model.vocabulary_size != len(vocab):
        raise ConfigError(
            f"vocabulary {vocab_path} has {len(vocab)} tokens but the "
            f"checkpoint's embedding has {cfg.model.vocabulary_size} rows"
        )
    cfg = cfg.replace(data=dataclasses.replace(cfg.data, vocab_file=vocab_path))
    return cfg.validate(), init, vocab, vocab_path


def resolve_precision(precision, hidden_dim):
    """`finetune.precision` -> a Keras dtype policy name ("auto" resolved).

    The same choice as pretraining (`training.choose_fast_path`): bfloat16
    on GPUs/TPUs and on CPUs with bf16 instructions, else float32. Whole-step
    XLA stays off: compile time dominates short fine-tuning runs.
    """
    from model import training
    from model.strategy import device_kind

    policy, _ = training.choose_fast_path(
        precision, "false", hidden_dim, device_kind(), 1
    )
    return policy


def _recorded_config(cfg, labels):
    """`cfg` with the precision and learning rate resolved, and the config
    written beside the model: what export needs (labels, casing, lengths, the
    vocab's name)."""
    hidden = cfg.model.hidden_dim
    learning_rate = finetune_learning_rate(cfg.finetune.learning_rate, hidden)
    if cfg.finetune.learning_rate == "auto":
        print(
            f"learning rate: {learning_rate:g} (auto for an encoder of width "
            f"{hidden}; --learning_rate sets it)",
            flush=True,
        )
    cfg = cfg.replace(
        finetune=dataclasses.replace(
            cfg.finetune,
            precision=resolve_precision(cfg.finetune.precision, hidden),
            learning_rate=learning_rate,
        )
    )
    label_names = tuple(cfg.export.label_names)
    if len(label_names) != len(labels):
        label_names = ()
    recorded = cfg.replace(
        finetune=dataclasses.replace(cfg.finetune, labels=tuple(labels)),
        data=dataclasses.replace(cfg.data, vocab_file=VOCAB_FILE),
        export=dataclasses.replace(
            cfg.export,
            max_seq_length=cfg.finetune.max_seq_length,
            label_names=label_names,
        ),
    )
    return cfg, recorded


# === Metrics ===
def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


class _MetricsLog:
    """`metrics.jsonl` of one run, rewritten whole (atomically) on each
    entry: remote filesystems cannot append, and the log stays small."""

    def __init__(self, path):
        self.path = path
        self._lines = []

    def write(self, entry: dict) -> None:
        self._lines.append(json.dumps(entry) + "\n")
        fileio.write_atomic(self.path, "".join(self._lines))


# === Training ===
def build_classifier(cfg, init, num_classes, dtype=None):
    """A `BertClassifier` over a fresh or pretrained `BertBackbone`.

    `dtype` is the backbone's dtype policy (e.g. "mixed_bfloat16"); weights
    are float32 variables under every policy.
    """
    from model.bert_backbone import BertBackbone, load_pretrained_backbone
    from model.bert_classifier import BertClassifier

    if init.kind == "random":
        backbone = BertBackbone.from_model_config(cfg.model, dtype=dtype)
    else:
        backbone = load_pretrained_backbone(
            init.path, model_cfg=cfg.model, dtype=dtype, checkpoint=init.checkpoint
        )
    pooling = cfg.finetune.pooling if cfg.finetune.pooling != "auto" else "cls"
    return BertClassifier(
        backbone, num_classes, dropout=cfg.finetune.dropout, pooling=pooling
    )


def train_one(
    cfg,
    init,
    train_ds,
    eval_ds,
    eval_labels,
    labels,
    n_train,
    seed,
    run_dir,
    quiet=False,
    signals=None,
):
    """One fine-tuning run (build, train, evaluate each epoch); returns its
    summary dict and writes it to `run_dir/eval_metrics.json`.

    `cfg.finetune.precision` must already be a dtype policy name (`run`
    resolves "auto" once and records it in `config.yaml`). `eval_ds` is
    batched, `train_ds` not.
    """
    import tensorflow as tf

    import keras

    from model import text_data
    from model.finetune_callbacks import EvaluateEachEpoch, Progress, StopOnNonFinite
    from model.optimization import create_optimizer

    ft = cfg.finetune
    precision = ft.precision  # resolved once, by `run`
    fileio.makedirs(run_dir)
    # A rerun into the same model_dir starts a fresh log (rewritten whole).
    log = _MetricsLog(fileio.join(run_dir, METRICS_LOG_FILE))
    keras.utils.set_random_seed(seed)
    steps_per_epoch = max(1, math.ceil(n_train / ft.batch_size))
    epochs = ft.epochs
    if ft.max_steps and ft.max_steps < epochs * steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, ft.max_steps)
        epochs = math.ceil(ft.max_steps / steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(total_steps * ft.warmup_proportion))
    learning_rate = float(ft.learning_rate)  # resolved once, by `_run`

    # Build.
    model = build_classifier(cfg, init, len(labels), dtype=precision)
    optimizer = create_optimizer(
        learning_rate=learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        weight_decay=ft.weight_decay,
        global_clipnorm=1.0,
    )
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # XLA compile time dominates short CPU runs; plain graphs start faster.
        jit_compile=False,
    )
    shuffled = train_ds.shuffle(
        min(n_train, 100_000), seed=seed, reshuffle_each_iteration=True
    ).repeat()
    if ft.group_by_length:
        batches = text_data.length_grouped_batches(shuffled, ft.batch_size, seed=seed)
    else:
        batches = shuffled.batch(ft.batch_size)
    batches = batches.prefetch(tf.data.AUTOTUNE)
    print(
        f"seed {seed}: {epochs} epoch(s) x {steps_per_epoch} steps, batch "
        f"{ft.batch_size}, peak lr {learning_rate:g}, warm-up {warmup_steps} "
        f"steps, {precision}"
        + (", length-grouped batches" if ft.group_by_length else ""),
        flush=True,
    )

    # Train, evaluating each epoch.
    evaluate = EvaluateEachEpoch(
        eval_ds,
        eval_labels,
        len(labels),
        fileio.join(run_dir, BEST_WEIGHTS_FILE),
        log,
    )
    progress = Progress(log, log_every=max(1, steps_per_epoch // 4), quiet=quiet)
    start = time.time()
    # Signals are polled between steps (`StopOnNonFinite`): one line,
    # exit 130/143; fine-tuning keeps no mid-run checkpoint, so a rerun
    # starts the run again.
    with signals.deferred() if signals else contextlib.nullcontext():
        model.fit(
            batches,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=[StopOnNonFinite(signals), progress, evaluate],
            shuffle=False,  # the dataset is shuffled above, per seed
            verbose=0,
        )
    summary = {
        "seed": seed,
        "best_epoch": evaluate.best["epoch"],
        "accuracy": evaluate.best["accuracy"],
        "macro_f1": evaluate.best["macro_f1"],
        "history": evaluate.history,
        "steps": total_steps,
        "train_seconds": round(time.time() - start, 1),
    }
    fileio.write_atomic(
        fileio.join(run_dir, EVAL_METRICS_FILE), json.dumps(summary, indent=2)
    )
    return summary


def run(argv=None) -> dict:
    """Fine-tunes (see `_run`); `--model_dir` is locked while it runs."""
    with output_lock.released_at_end():
        return _parse_and_run(argv)


def _parse_and_run(argv=None) -> dict:
    """Fine-tunes; returns the `eval_metrics.json` dict.

    Raises:
        ConfigError: a flag, config, checkpoint or data problem (one line,
            before training).
        training.Diverged: a non-finite loss (nothing of it saved).
        training.Interrupted: SIGINT/SIGTERM.
    """
    # 1. Resolve the config: flags, YAML, checkpoint, vocabulary.
    args, overrides = _parse_flags(argv)
    from model import training  # after --help and flag errors

    with training.StopSignals() as signals:
        return _run(args, overrides, signals)


def _run(args, overrides, signals) -> dict:
    from model import text_data, training  # TensorFlow: after --help and flag errors

    output_lock.acquire(args.model_dir, "model.finetune")  # before any work
    model_dir = args.model_dir
    _check_finished(model_dir, args.overwrite)
    cfg, init, vocab, vocab_path = resolve_config(args, overrides)
    fileio.makedirs(model_dir)
    # What a killed or disk-full run was writing (temporary names: ours).
    for pattern in (f"tmp-*-{BEST_WEIGHTS_FILE}", f"seed_*/tmp-*-{BEST_WEIGHTS_FILE}"):
        for path in fileio.glob(fileio.join(model_dir, pattern)):
            fileio.remove(path)
    training.clear_leftovers(model_dir)
    if init.kind == "random":
        print("encoder starts from random weights (no --init_checkpoint)")
    else:
        print(
            f"encoder starts from {init.kind} checkpoint {init.path} "
            f"({init.checkpoint.what})"
        )

    # 2. Prepare the data: both splits read, checked, tokenized (once).
    data = text_data.prepare_data(
        cfg,
        train_path=args.train,
        eval_path=args.eval,
        vocab=vocab,
        vocab_path=vocab_path,
        out_dir=model_dir,
        max_bad_fraction=args.max_bad_fraction,
    )
    labels = data.labels
    print(
        f"labels {labels}; {data.num_train} train / {data.num_eval} eval examples",
        flush=True,
    )
    train_ds = data.train.cache()  # every seed reshuffles the cached examples
    eval_batches = data.eval.batch(EVAL_BATCH_SIZE).cache()
    eval_labels = np.concatenate([y.numpy() for _, y in eval_batches])

    # What export needs beside the weights: the config and the vocabulary.
    cfg, recorded = _recorded_config(cfg, labels)
    vocab_copy = fileio.join(model_dir, VOCAB_FILE)
    if not fileio.same_path(vocab_path, vocab_copy):
        fileio.copy(vocab_path, vocab_copy, overwrite=True)
    dump_config(recorded, model_dir)

    # 3-5. Build, train and evaluate, once per seed.
    ft = cfg.finetune
    seeds = list(range(ft.seed, ft.seed + ft.seeds))
    runs = [
        train_one(
            cfg,
            init,
            train_ds,
            eval_batches,
            eval_labels,
            labels,
            data.num_train,
            seed,
            model_dir if len(seeds) == 1 else fileio.join(model_dir, f"seed_{seed}"),
            quiet=args.quiet,
            signals=signals,
        )
        for seed in seeds
    ]

    # 6. Write: the best seed's weights as the model_dir's, and the summary.
    best = max(runs, key=lambda r: r["accuracy"])
    if len(seeds) > 1:
        fileio.copy(
            fileio.join(model_dir, f"seed_{best['seed']}", BEST_WEIGHTS_FILE),
            fileio.join(model_dir, BEST_WEIGHTS_FILE),
            overwrite=True,
        )
    acc_mean, acc_std = mean_std([r["accuracy"] for r in runs])
    f1_mean, f1_std = mean_std([r["macro_f1"] for r in runs])
    result = {
        "init": init.kind if init.kind == "random" else f"{init.kind}:{init.path}",
        "labels": labels,
        "num_train": data.num_train,
        "num_eval": data.num_eval,
        "num_bad_rows": data.num_bad,
        "pooling": cfg.finetune.pooling,
        "seeds": seeds,
        "accuracy_mean": acc_mean,
        "accuracy_std": acc_std,
        "macro_f1_mean": f1_mean,
        "macro_f1_std": f1_std,
        "best_seed": best["seed"],
        "runs": runs,
    }
    fileio.write_atomic(
        fileio.join(model_dir, EVAL_METRICS_FILE), json.dumps(result, indent=2)
    )
    if len(seeds) > 1:
        print(
            f"eval accuracy {acc_mean:.4f} ± {acc_std:.4f}, macro-F1 "
            f"{f1_mean:.4f} ± {f1_std:.4f} over {len(seeds)} seeds "
            f"(best seed {best['seed']}: {best['accuracy']:.4f})"
        )
    else:
        print(
            f"eval accuracy {acc_mean:.4f}, macro-F1 {f1_mean:.4f} "
            f"(best epoch {best['best_epoch']}); model in {model_dir}"
        )
    return result


def _check_finished(model_dir, overwrite):
    """A finished run (`eval_metrics.json`) is replaced only with --overwrite.

    With it, the old result files go first, so a run that then fails
    leaves no earlier result paired with new weights.
    """
    done = fileio.join(model_dir, EVAL_METRICS_FILE)
    if not fileio.exists(done):
        return
    if not overwrite:
        raise ConfigError(
            f"--model_dir {model_dir} holds a finished fine-tuning run "
            f"({EVAL_METRICS_FILE}): pass --overwrite to replace it, or give "
            "another --model_dir"
        )
    fileio.remove(done)


def main(argv=None):
    """Flag, path, config and data problems: one `error:` line, exit 2.

    Divergence and a full disk: one line, exit 1. SIGINT/SIGTERM: one
    line, exit 130/143.
    """
    quiet_tensorflow_logs()
    try:
        run(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        from model import training  # loaded by now: run got past the flags

        if isinstance(e, training.Diverged):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        if isinstance(e, training.Interrupted):
            print(
                f"error: interrupted ({e.name}); fine-tuning keeps no mid-run "
                "checkpoint: rerun the command to train again",
                file=sys.stderr,
            )
            sys.exit(e.exit_code)
        if not fileio.is_disk_full(e):
            raise
        print(f"error: {fileio.disk_full_line(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
