"""Fine-tune a BERT encoder for sentence (pair) classification.

    python -m model.finetune --config=configs/finetune/sst2.yaml \\
        --train=train.tsv --eval=dev.tsv --model_dir=out/sst2 \\
        [--init_checkpoint=out/pretrain] [--epochs=3 --batch_size=32
        --learning_rate=5e-5 --seed=0 --seeds=1 --max_steps=0]
        [--vocab=vocab.txt] [--set section.key=value ...]

`--train`/`--eval` take a raw labelled file (TSV with quoting off, CSV,
JSONL; header names the columns) or a directory of classification records
from `pipelines.classification_data` (its metadata.json is checked against
the model before any work).

`--init_checkpoint` takes our pretraining `model_dir` (its `config.yaml`
gives the model sizes and casing, its `encoder.weights.h5` the weights) or
a Google TF1 checkpoint (prefix, or the directory holding it and
`vocab.txt`). Without it the encoder starts from random weights, and the
run says so.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time

import numpy as np

from configs import features, labelled_text
from configs.loader import RESOLVED_CONFIG_FILE, dump_config, load_config
from configs.loader import load_resolved
from configs.metadata import check_compatible
from configs.schema import ConfigError

BEST_WEIGHTS_FILE = "best.weights.h5"
VOCAB_FILE = "vocab.txt"
EVAL_METRICS_FILE = "eval_metrics.json"
METRICS_LOG_FILE = "metrics.jsonl"
EVAL_BATCH_SIZE = 256


# === Flags and config ===
def _parse_flags(argv):
    parser = argparse.ArgumentParser(
        prog="python -m model.finetune",
        allow_abbrev=False,
        description="Fine-tune BERT for sentence classification.",
    )
    parser.add_argument("--config", action="append", default=[], help="YAML file")
    parser.add_argument("--train", required=True, help="file or records dir")
    parser.add_argument("--eval", required=True, help="file or records dir")
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--init_checkpoint", default="")
    parser.add_argument("--vocab", default="", help="default: the checkpoint's")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--max_steps", type=int)
    parser.add_argument(
        "--set", action="append", default=[], help="section.key=value override"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-step lines")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unknown flag(s): {' '.join(unknown)}")
    overrides = [
        f"finetune.{name}={getattr(args, name)}"
        for name in ("epochs", "batch_size", "learning_rate", "seed", "seeds")
        + ("max_steps",)
        if getattr(args, name) is not None
    ]
    return args, overrides + list(args.set)


@dataclasses.dataclass
class _Init:
    """Where the encoder comes from."""

    kind: str  # "random", "ours" or "google"
    path: str = ""
    vocab: str = ""  # vocab file found beside the checkpoint


def _resolve_init(path: str) -> _Init:
    import tensorflow as tf

    from model import checkpoint_conversion

    if not path:
        return _Init("random")
    if tf.io.gfile.exists(os.path.join(path, RESOLVED_CONFIG_FILE)):
        return _Init("ours", path, _first_existing(path, VOCAB_FILE))
    prefix = path
    if tf.io.gfile.isdir(path):
        prefix = tf.train.latest_checkpoint(path) or ""
        if not prefix:
            index = tf.io.gfile.glob(os.path.join(path, "*.ckpt.index"))
            prefix = index[0][: -len(".index")] if index else ""
    if prefix and checkpoint_conversion.is_google_checkpoint(prefix):
        return _Init(
            "google", prefix, _first_existing(os.path.dirname(prefix), VOCAB_FILE)
        )
    raise ConfigError(
        f"--init_checkpoint {path} is neither a pretraining model_dir "
        f"(with {RESOLVED_CONFIG_FILE}) nor a Google BERT checkpoint"
    )


def _first_existing(directory, name):
    import tensorflow as tf

    path = os.path.join(directory, name)
    return path if tf.io.gfile.exists(path) else ""


def resolve_config(args, overrides):
    """Returns (cfg, init, vocab list, vocab path) before any data is read."""
    cfg = load_config(args.config, overrides)
    init = _resolve_init(args.init_checkpoint)
    if init.kind == "ours":
        # The encoder's sizes and casing are the checkpoint's, not the YAML's.
        ckpt = load_resolved(init.path)
        # The data section (casing, vocabulary) describes the same records.
        cfg = cfg.replace(model=ckpt.model, data=ckpt.data)
        print(f"model config from {os.path.join(init.path, RESOLVED_CONFIG_FILE)}")
    elif init.kind == "google":
        from model import checkpoint_conversion

        cfg = cfg.replace(
            model=checkpoint_conversion.model_config_from_checkpoint(init.path)
        )
    vocab_path = args.vocab or init.vocab or cfg.data.vocab_file
    if init.kind == "ours" and not args.vocab and not init.vocab and vocab_path:
        if not os.path.isabs(vocab_path) and "://" not in vocab_path:
            beside = os.path.join(init.path, vocab_path)
            vocab_path = beside if os.path.exists(beside) else vocab_path
    if not vocab_path:
        raise ConfigError(
            "no vocabulary: pass --vocab=FILE (or an --init_checkpoint with one)"
        )
    import tensorflow as tf

    if not tf.io.gfile.exists(vocab_path):
        raise ConfigError(f"vocabulary {vocab_path} does not exist")
    vocab = features.read_vocab(vocab_path)
    features.special_token_ids(vocab)
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


# === Data ===
@dataclasses.dataclass
class _Split:
    """One of train/eval, before label ids are fixed."""

    path: str
    rows: object = None  # text_data.LabelledRows for raw files
    dataset: object = None  # tf.data for records
    meta: dict | None = None
    num_examples: int = 0


def _open_split(path, cfg, vocab_path, role):
    from model import text_data

    if text_data.is_records_dir(path):
        ds, meta = text_data.read_records(path)
        if meta is not None:
            check_compatible(
                meta,
                kind="classification",
                max_seq_length=cfg.finetune.max_seq_length,
                vocabulary_size=cfg.model.vocabulary_size,
                vocab_sha256=features.vocab_sha256(vocab_path),
                max_sequence_length=cfg.model.max_sequence_length,
            )
            if meta.get("do_lower_case", cfg.data.do_lower_case) != (
                cfg.data.do_lower_case
            ):
                raise ConfigError(
                    f"{path}: records were made with do_lower_case="
                    f"{meta['do_lower_case']}, the model uses "
                    f"{cfg.data.do_lower_case}"
                )
            n = meta["num_examples"]
        else:
            n = text_data.count_records(ds)
        if n == 0:
            raise ConfigError(f"{role} {path}: no usable rows")
        return _Split(path, dataset=ds, meta=meta, num_examples=n)
    rows = text_data.read_labelled_file(
        path,
        text_column=cfg.finetune.text_column,
        text_b_column=cfg.finetune.text_b_column,
        label_column=cfg.finetune.label_column,
    )
    return _Split(path, rows=rows, num_examples=len(rows))


def _labels_of(split):
    if split.rows is not None:
        return set(split.rows.labels)
    if split.meta is not None:
        return set(split.meta["labels"])
    return None  # records without metadata: ids only


def prepare_data(cfg, train_path, eval_path, vocab, vocab_path, model_dir):
    """Reads both splits; returns (train_ds, eval_ds, labels, n_train, n_eval).

    Datasets yield unbatched `(features, label_id)`. Bad rows go to
    `model_dir/dead_letter_{train,eval}.jsonl`, their count is printed.
    """
    from model import text_data

    train = _open_split(train_path, cfg, vocab_path, "--train")
    evaluation = _open_split(eval_path, cfg, vocab_path, "--eval")
    configured = list(cfg.finetune.labels)
    record_labels = [s.meta["labels"] for s in (train, evaluation) if s.meta]
    if record_labels:
        labels = list(record_labels[0])
        if configured and configured != labels:
            raise ConfigError(
                f"records have labels {labels}, the config says {configured}"
            )
    else:
        labels = configured
    for split in (train, evaluation):
        if split.rows is not None and labels:
            split.rows.drop_unknown_labels(labels)
    if not labels and train.rows is not None:
        labels = labelled_text.sort_labels(train.rows.labels)
    # Bad rows: dead-letter file + count; no usable row is an error.
    for split, role in ((train, "train"), (evaluation, "eval")):
        if split.rows is None:
            continue
        dead_letter = os.path.join(model_dir, f"dead_letter_{role}.jsonl")
        text_data.write_dead_letter(dead_letter, split.rows.bad)
        bad = len(split.rows.bad)
        print(
            f"{role}: {len(split.rows)} usable rows from {split.path}"
            + (f", {bad} bad row(s) -> {dead_letter}" if bad else ", 0 bad rows")
        )
        if len(split.rows) == 0:
            raise ConfigError(
                f"{split.path}: no usable rows ({bad} bad, see {dead_letter})"
            )
        split.num_examples = len(split.rows)
    train_labels, eval_labels = _labels_of(train), _labels_of(evaluation)
    if train_labels is not None and eval_labels is not None:
        if train_labels != eval_labels:
            raise ConfigError(
                "label sets differ between train "
                f"({', '.join(labelled_text.sort_labels(train_labels))}) and eval "
                f"({', '.join(labelled_text.sort_labels(eval_labels))})"
            )
    packer = None
    datasets = []
    for split in (train, evaluation):
        if split.rows is None:
            datasets.append(split.dataset)
            continue
        if packer is None:
            packer = text_data.TextPacker(
                vocab, cfg.data.do_lower_case, cfg.finetune.max_seq_length
            )
        index = {value: i for i, value in enumerate(labels)}
        ids = [index[v] for v in split.rows.labels]
        datasets.append(text_data.tokenized_dataset(split.rows, ids, packer))
    if not labels:
        raise ConfigError("records carry no metadata: set finetune.labels")
    return datasets[0], datasets[1], labels, train.num_examples, evaluation.num_examples


# === Metrics ===
def classification_metrics(labels, predictions, num_classes) -> dict:
    """Accuracy and macro-F1 (mean over classes present in either array)."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    f1s = []
    for c in range(num_classes):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
    }


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


# === Training ===
def _make_callbacks(eval_ds, eval_labels, num_classes, run_dir, log_every, quiet):
    import keras

    class EvaluateEachEpoch(keras.callbacks.Callback):
        """Accuracy + macro-F1 on eval after every epoch; keeps the best."""

        def __init__(self):
            super().__init__()
            self.history = []
            self.best = None

        def on_epoch_end(self, epoch, logs=None):
            # predict_on_batch: no iterator warnings for a finite dataset.
            logits = np.concatenate(
                [self.model.predict_on_batch(x) for x, _ in eval_ds]
            )
            metrics = classification_metrics(
                eval_labels, np.argmax(logits, axis=-1), num_classes
            )
            metrics.update(epoch=epoch + 1, train_loss=float(logs.get("loss", 0)))
            self.history.append(metrics)
            improved = self.best is None or metrics["accuracy"] > self.best["accuracy"]
            if improved:
                self.best = dict(metrics)
                self.model.save_weights(os.path.join(run_dir, BEST_WEIGHTS_FILE))
            with open(os.path.join(run_dir, METRICS_LOG_FILE), "a") as f:
                f.write(json.dumps({"kind": "eval", **metrics}) + "\n")
            print(
                f"  epoch {epoch + 1}: train loss {metrics['train_loss']:.4f}, "
                f"eval accuracy {metrics['accuracy']:.4f}, "
                f"macro-F1 {metrics['macro_f1']:.4f}"
                + (" (best so far, saved)" if improved else ""),
                flush=True,
            )

    class Progress(keras.callbacks.Callback):
        """One line every `log_every` steps: loss, learning rate, speed."""

        def __init__(self):
            super().__init__()
            self.step = 0
            self.start = time.time()

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if quiet or self.step % log_every:
                return
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            elapsed = time.time() - self.start
            rate = self.step / max(elapsed, 1e-9)
            print(
                f"  step {self.step}: loss {logs.get('loss', 0):.4f}, "
                f"lr {lr:.2e}, {rate:.1f} steps/s",
                flush=True,
            )
            with open(os.path.join(run_dir, METRICS_LOG_FILE), "a") as f:
                f.write(
                    json.dumps(
                        {
                            "kind": "train",
                            "step": self.step,
                            "loss": logs.get("loss"),
                            "elapsed_s": round(elapsed, 3),
                        }
                    )
                    + "\n"
                )

    return EvaluateEachEpoch(), Progress()


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
        backbone = load_pretrained_backbone(init.path, model_cfg=cfg.model, dtype=dtype)
    return BertClassifier(backbone, num_classes, dropout=cfg.finetune.dropout)


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
):
    """One fine-tuning run; returns its summary dict.

    `cfg.finetune.precision` must already be a dtype policy name (`run`
    resolves "auto" once and records it in `config.yaml`).
    """
    import keras
    import tensorflow as tf

    from model import text_data
    from model.optimization import create_optimizer

    ft = cfg.finetune
    precision = ft.precision  # resolved once, by `run`
    os.makedirs(run_dir, exist_ok=True)
    log = os.path.join(run_dir, METRICS_LOG_FILE)
    if os.path.exists(log):
        os.remove(log)  # a rerun into the same model_dir starts a fresh log
    keras.utils.set_random_seed(seed)
    steps_per_epoch = max(1, math.ceil(n_train / ft.batch_size))
    epochs = ft.epochs
    if ft.max_steps and ft.max_steps < epochs * steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, ft.max_steps)
        epochs = math.ceil(ft.max_steps / steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(total_steps * ft.warmup_proportion))
    model = build_classifier(cfg, init, len(labels), dtype=precision)
    optimizer = create_optimizer(
        learning_rate=ft.learning_rate,
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
        f"{ft.batch_size}, peak lr {ft.learning_rate:g}, warm-up {warmup_steps} "
        f"steps, {precision}"
        + (", length-grouped batches" if ft.group_by_length else ""),
        flush=True,
    )
    evaluate, progress = _make_callbacks(
        eval_ds,
        eval_labels,
        len(labels),
        run_dir,
        log_every=max(1, steps_per_epoch // 4),
        quiet=quiet,
    )
    start = time.time()
    model.fit(
        batches,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=[progress, evaluate],
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
    with open(os.path.join(run_dir, EVAL_METRICS_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def run(argv=None) -> dict:
    """Fine-tunes; returns the `eval_metrics.json` dict.

    Raises:
        ConfigError: a flag, config, checkpoint or data problem (one line,
            before training).
    """
    args, overrides = _parse_flags(argv)
    cfg, init, vocab, vocab_path = resolve_config(args, overrides)
    model_dir = args.model_dir
    os.makedirs(model_dir, exist_ok=True)
    if init.kind == "random":
        print("encoder starts from random weights (no --init_checkpoint)")
    else:
        print(f"encoder starts from {init.kind} checkpoint {init.path}")
    train_ds, eval_ds, labels, n_train, n_eval = prepare_data(
        cfg, args.train, args.eval, vocab, vocab_path, model_dir
    )
    print(f"labels {labels}; {n_train} train / {n_eval} eval examples", flush=True)

    # Tokenize once; every seed reshuffles the cached examples.
    train_ds = train_ds.cache()
    eval_batches = eval_ds.batch(EVAL_BATCH_SIZE).cache()
    eval_labels = np.concatenate([y.numpy() for _, y in eval_batches])

    # What export needs: the config (labels, casing, lengths), the vocab.
    vocab_copy = os.path.join(model_dir, VOCAB_FILE)
    if os.path.abspath(vocab_path) != os.path.abspath(vocab_copy):
        import tensorflow as tf

        tf.io.gfile.copy(vocab_path, vocab_copy, overwrite=True)
    label_names = tuple(cfg.export.label_names)
    if len(label_names) != len(labels):
        label_names = ()
    # Resolved once, recorded in config.yaml (export builds float32 anyway).
    cfg = cfg.replace(
        finetune=dataclasses.replace(
            cfg.finetune,
            precision=resolve_precision(cfg.finetune.precision, cfg.model.hidden_dim),
        )
    )
    final_cfg = cfg.replace(
        finetune=dataclasses.replace(cfg.finetune, labels=tuple(labels)),
        data=dataclasses.replace(cfg.data, vocab_file=VOCAB_FILE),
        export=dataclasses.replace(
            cfg.export,
            max_seq_length=cfg.finetune.max_seq_length,
            label_names=label_names,
        ),
    )
    dump_config(final_cfg, model_dir)

    ft = cfg.finetune
    seeds = list(range(ft.seed, ft.seed + ft.seeds))
    runs = []
    for seed in seeds:
        run_dir = (
            model_dir if len(seeds) == 1 else os.path.join(model_dir, f"seed_{seed}")
        )
        runs.append(
            train_one(
                cfg,
                init,
                train_ds,
                eval_batches,
                eval_labels,
                labels,
                n_train,
                seed,
                run_dir,
                quiet=args.quiet,
            )
        )
    acc_mean, acc_std = mean_std([r["accuracy"] for r in runs])
    f1_mean, f1_std = mean_std([r["macro_f1"] for r in runs])
    best = max(runs, key=lambda r: r["accuracy"])
    if len(seeds) > 1:
        # The best seed's weights are the model_dir's, for model.export.
        shutil.copyfile(
            os.path.join(model_dir, f"seed_{best['seed']}", BEST_WEIGHTS_FILE),
            os.path.join(model_dir, BEST_WEIGHTS_FILE),
        )
    result = {
        "init": init.kind if init.kind == "random" else f"{init.kind}:{init.path}",
        "labels": labels,
        "num_train": n_train,
        "num_eval": n_eval,
        "seeds": seeds,
        "accuracy_mean": acc_mean,
        "accuracy_std": acc_std,
        "macro_f1_mean": f1_mean,
        "macro_f1_std": f1_std,
        "best_seed": best["seed"],
        "runs": runs,
    }
    with open(os.path.join(model_dir, EVAL_METRICS_FILE), "w") as f:
        json.dump(result, f, indent=2)
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


def main(argv=None):
    try:
        run(argv)
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
