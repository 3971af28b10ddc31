"""SST-2 dev accuracy: pretrained vs random-init BERT vs TF-IDF + logistic regression.

    .venv/bin/python benchmarks/sst2.py [--pretrain_steps=3000] [--seeds=3]
    .venv/bin/python benchmarks/sst2.py --quick     # reduced budget, labelled
    .venv/bin/python benchmarks/sst2.py --init_checkpoint=DIR   # GPU-pretrained

`--init_checkpoint=DIR` skips step 2 and fine-tunes from an existing
pretraining `model_dir` (ours: `config.yaml` + `encoder.weights.h5` +
`vocab.txt`), e.g. the bert_mini that `benchmarks/gpu_run.sh` pretrains
with `python -m model.pretrain --budget_minutes` on a GPU;
its `pretrain_summary.json`, when present, goes into the results. The
random-init runs use the checkpoint's model sizes, so both arms compare
the same architecture.

What it measures (all on this machine, in one run):

1. **Baseline** a user would pick instead: TF-IDF (word 1-2 grams) +
   logistic regression (scikit-learn, a benchmark-only dependency: the
   script pip-installs it into the running interpreter if it is missing),
   its `C` picked on dev from `TFIDF_C_GRID`.
2. **Pretraining** of `bert_mini` (L4/H256) on `../shared/data/corpus`
   (41 MB of public-domain books and US addresses) with Google's uncased
   vocabulary: `pipelines.pretraining_data` (DirectRunner, `dupe_factor`
   1, sequence 128) then `model.pretrain` for a fixed budget of
   `--pretrain_steps` steps of batch 32 (the budget is in steps so that it
   is the same on any machine; the wall time is reported).
3. **Fine-tuning** on the sentence-level SST-2 train split (6,920
   sentences), evaluated on the GLUE SST-2 dev set (872), `--seeds` runs
   from the pretrained encoder and `--seeds` from random init, same
   hyper-parameters; dev accuracy mean ± std (best epoch of each run).

`--budgets=5,15,30,60` is the "lift versus budget" table (issue 18): the
data job once, random init fine-tuned once (`--seeds` seeds), then per
budget `model.pretrain --config=MODEL --config=RECIPE --budget_minutes=B`
(RECIPE: `--recipe`, default `configs/pretrain/budget.yaml`; `--recipe=none`
is the old recipe: `--pretrain_lr`, `--pretrain_masking`, NSP) and the same
fine-tuning from it; each row gives the last logged MLM accuracy and the dev
accuracy median [min, max] over seeds against random init and TF-IDF:

    .venv/bin/python benchmarks/sst2.py --model=pretrain/bert_tiny.yaml \
        --budgets=5,15,30,60 --seeds=5 --out_dir=/tmp/bench_budget

`--task_mix=N` mixes the train split's unlabeled sentences (N copies) into
each row's pretraining data instead (task-adaptive pretraining on the same
schedule, not a second phase; never dev):

    .venv/bin/python benchmarks/sst2.py --model=pretrain/bert_tiny.yaml \
        --budgets=30 --task_mix=10 --seeds=5 --out_dir=/tmp/bench_mix

`--combine=DIR1,DIR2,...` prints one table over earlier runs (e.g. one
`--out_dir` per `--learning_rate`) and the lift with each arm at its own
best learning rate.

Targets (issue 5): pretraining lifts dev accuracy by >= 3 points over
random init, and the fine-tuned model beats the TF-IDF baseline. Results
go to `--out_dir/results.json` and a Markdown table on stdout.
Numbers depend on the machine and its load: say where they were taken.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, REPO)
TFIDF_C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)
# Documents of the corpus (1,569 here) held out of pretraining for the
# held-out masked-LM accuracy (~1%).
EVAL_DOCUMENTS = 16
# Copies of the task text in a --tapt phase's records (the data job's
# --dupe_factor); --task_mix sets its own.
TAPT_DUPE_FACTOR = 10


def _flags(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", default=f"{SHARED}/sentiment/sst2_sentences_train.tsv")
    p.add_argument("--dev", default=f"{SHARED}/sentiment/sst2_dev.tsv")
    p.add_argument("--corpus", default=f"{SHARED}/corpus/*.txt.gz")
    p.add_argument("--vocab", default=f"{SHARED}/vocab/bert-base-uncased-vocab.txt")
    p.add_argument("--model", default="pretrain/bert_mini.yaml")
    p.add_argument("--out_dir", default="/tmp/bench_sst2")
    p.add_argument("--pretrain_steps", type=int, default=3000)
    p.add_argument("--pretrain_lr", type=float, default=2e-4)
    p.add_argument("--pretrain_masking", default="static", help="static|dynamic")
    p.add_argument(
        "--pretrain_seq_length",
        type=int,
        default=128,
        help="tokens per pretraining record (the data job's --max_seq_length)",
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument(
        "--finetune_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every fine-tuning run, both arms (passed "
        "to model.finetune as --set), e.g. finetune.dropout=0; repeatable",
    )
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument(
        "--quick",
        action="store_true",
        help="reduced budget (corpus-small, 300 pretraining steps, 1 epoch): "
        "a smoke run whose numbers are NOT the benchmark",
    )
    p.add_argument(
        "--budgets",
        default="",
        help="comma-separated pretraining budgets in minutes: the lift-versus-"
        "budget table (one pretraining per budget, one random-init arm)",
    )
    p.add_argument(
        "--recipe",
        default="configs/pretrain/budget.yaml",
        help="overrides config for --budgets runs; 'none' = the old recipe",
    )
    p.add_argument(
        "--tapt",
        default="",
        help="task-adaptive rows for --budgets: comma-separated BASE:MINUTES "
        "pairs; each continues the BASE-minute run for MINUTES on the --train "
        "split's unlabeled sentences (never dev), e.g. 5:10 is 15 minutes in all",
    )
    p.add_argument(
        "--task_mix",
        type=int,
        default=0,
        help="--budgets: mix the --train split's unlabeled sentences (never "
        "dev) into every row's pretraining data, as N copies (the data job's "
        "--dupe_factor); task-adaptive pretraining on one schedule, instead "
        "of --tapt's second phase",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="--budgets: keep the rows of an earlier run in --out_dir "
        "(results.json) and run only the missing ones",
    )
    p.add_argument(
        "--continue_from",
        default="",
        help="--budgets: continued pretraining of this checkpoint (a Hugging "
        "Face BERT directory, a TF1 checkpoint or a run of ours) instead of "
        "pretraining from scratch; the baseline arm fine-tunes the checkpoint "
        "itself, and the corpus is tokenized with its vocab.txt",
    )
    p.add_argument(
        "--continue_lr",
        type=float,
        default=1e-4,
        help="--continue_from and --tapt phases: peak pretraining learning "
        "rate of a continuation (the recipe's 1e-3 is for training from "
        "scratch; the --tapt row in the README ran at 1e-3, before this flag)",
    )
    p.add_argument(
        "--random_mean_pooling",
        action="store_true",
        help="--budgets: one more random-init arm, with finetune.pooling=mean",
    )
    p.add_argument("--skip_pretrain", action="store_true", help="reuse out_dir")
    p.add_argument(
        "--init_checkpoint",
        default="",
        help="fine-tune from this pretraining model_dir (no pretraining here)",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="fine-tune the two arms at once, one per CPU core",
    )
    p.add_argument(
        "--baseline_only", action="store_true", help="only TF-IDF + LR (seconds)"
    )
    p.add_argument(
        "--combine",
        default="",
        help="comma-separated out_dirs of earlier runs (e.g. one per learning "
        "rate): print one table and each arm at its best setting; no training",
    )
    args = p.parse_args(argv)
    for checkpoint in (args.continue_from, args.init_checkpoint):
        vocab = os.path.join(checkpoint, "vocab.txt") if checkpoint else ""
        if vocab and os.path.exists(vocab):
            # The records (and the fine-tuning's tokenizer) must use the
            # checkpoint's tokens; finetune refuses any other vocab.
            args.vocab = vocab
    if args.quick:
        args.corpus = f"{SHARED}/corpus-small/sample.txt"
        args.pretrain_steps = min(args.pretrain_steps, 300)
        args.epochs = 1
    return args


def tfidf_baseline(train, dev) -> dict:
    """TF-IDF (1-2 grams) + logistic regression; returns dev accuracy."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("installing scikit-learn (benchmark-only dependency) ...", flush=True)
        subprocess.check_call(
            [sys.executable, "-m", "pip", "install", "--quiet", "scikit-learn"]
        )
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from configs.labelled_text import parse_row

    def read(path):
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")[1:]
        rows = [
            parse_row(
                line,
                fmt="tsv",
                columns=["sentence", "label"],
                text_column="sentence",
                text_b_column="",
                label_column="label",
            )
            for line in lines
        ]
        rows = [r for status, r in rows if status == "ok"]
        return [r[0] for r in rows], [r[2] for r in rows]

    start = time.time()
    x_train, y_train = read(train)
    x_dev, y_dev = read(dev)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features_train = vectorizer.fit_transform(x_train)
    features_dev = vectorizer.transform(x_dev)
    # The regularisation is picked on dev, as the BERT runs' learning rate
    # and best epoch are: the same selection for every model.
    by_c = {}
    for c in TFIDF_C_GRID:
        classifier = LogisticRegression(C=c, max_iter=2000)
        classifier.fit(features_train, y_train)
        predictions = classifier.predict(features_dev)
        by_c[c] = float(sum(p == y for p, y in zip(predictions, y_dev)) / len(y_dev))
    best_c = max(by_c, key=by_c.get)
    return {
        "accuracy": by_c[best_c],
        "C": best_c,
        "accuracy_by_C": by_c,
        "seconds": round(time.time() - start, 1),
    }


def pretraining_records(args) -> tuple:
    """The data job (once per out_dir); returns (records dir, seconds)."""
    from pipelines import pretraining_data

    records = os.path.join(args.out_dir, "pretraining_records")
    start = time.time()
    pretraining_data.run(
        [
            f"--input={args.corpus}",
            f"--vocab={args.vocab}",
            f"--output_dir={records}",
            f"--max_seq_length={args.pretrain_seq_length}",
            "--max_predictions_per_seq=20",
            "--dupe_factor=1",
            "--num_shards=8",
            # Whole documents held out (never trained on) for the trainer's
            # held-out masked-LM accuracy: records/eval/.
            f"--eval_documents={2 if args.quick else EVAL_DOCUMENTS}",
            "--overwrite",
        ]
    )
    return records, time.time() - start


def pretrain(
    args,
    records=None,
    budget_minutes=0.0,
    name="pretrain",
    init_checkpoint="",
    eval_data="",
) -> dict:
    """`model.pretrain` for `--pretrain_steps`, or to `budget_minutes` with
    `--recipe` over `--model` (then `--pretrain_steps` is only a cap).
    `eval_data`: held-out records (default: the trainer's own choice, the
    records' eval/ split)."""
    from model import pretrain as pretrain_lib

    data_seconds = 0.0
    if records is None:
        records, data_seconds = pretraining_records(args)
    model_dir = os.path.join(args.out_dir, name)
    recipe = budget_minutes > 0 and args.recipe != "none"
    steps = args.pretrain_steps if not budget_minutes else 10**7
    start = time.time()
    pretrain_lib.run(
        [f"--config={args.model}"]
        + ([f"--config={args.recipe}"] if recipe else [])
        + ([f"--budget_minutes={budget_minutes:g}"] if budget_minutes else [])
        + [
            f"--data={records}",
            f"--model_dir={model_dir}",
            f"--steps={steps}",
            "--batch_size=32",
        ]
        + (
            []
            if recipe
            else [
                f"--learning_rate={args.pretrain_lr}",
                f"--masking={args.pretrain_masking}",
                f"--warmup_steps={max(1, args.pretrain_steps // 10)}",
            ]
        )
        + [
            f"--save_every={max(1, args.pretrain_steps // 4)}",
            f"--log_every={max(1, args.pretrain_steps // 20)}",
            f"--set=data.vocab_file={os.path.abspath(args.vocab)}",
            f"--set=data.max_seq_length={args.pretrain_seq_length}",
        ]
        + ([f"--init_checkpoint={init_checkpoint}"] if init_checkpoint else [])
        + (
            # A continuation (--continue_from, or a --tapt phase): the
            # recipe's 1e-3 peak knocked the 30-minute encoder off its
            # corpus (measured: -1.1 points).
            [f"--learning_rate={args.continue_lr}"]
            if init_checkpoint
            else []
        )
        + ([f"--eval_data={eval_data}"] if eval_data else [])
    )
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    last = logged[-1]
    evals = [r for r in logged if "eval_mlm_accuracy" in r]
    return {
        "model_dir": model_dir,
        "data_seconds": round(data_seconds, 1),
        "pretrain_seconds": round(time.time() - start, 1),
        "steps": last["step"],
        "budget_minutes": budget_minutes,
        "recipe": args.recipe if recipe else "old",
        "init_checkpoint": init_checkpoint,
        # Training-batch MLM accuracy (last logged step; dynamic masks).
        "train_mlm_accuracy": _last_value(logged, "mlm_accuracy"),
        # Held-out documents' fixed masks, at this run's first and last
        # evaluation (the trainer evaluates at its start and its end).
        "eval_mlm_accuracy_start": evals[0]["eval_mlm_accuracy"] if evals else None,
        "eval_mlm_accuracy": evals[-1]["eval_mlm_accuracy"] if evals else None,
        "eval_mlm_loss": evals[-1].get("eval_mlm_loss") if evals else None,
    }


def _last_value(logged, key):
    values = [r[key] for r in logged if key in r]
    return values[-1] if values else None


def _median_range(result) -> tuple:
    accs = sorted(r["accuracy"] for r in result["runs"])
    n = len(accs)
    median = accs[n // 2] if n % 2 else (accs[n // 2 - 1] + accs[n // 2]) / 2
    return median, accs[0], accs[-1]


def task_text_records(args, dupe_factor=TAPT_DUPE_FACTOR) -> str:
    """The `--train` split's sentences, unlabeled, as pretraining records.

    Only the training split: pretraining on dev sentences, even without
    labels, would leak them into the encoder. Sentences go 8 to a
    document, as the README's task-adaptive pretraining section does: a
    one-sentence document gives one ~40-token pair per 128-token sequence
    (measured: 69,110 instances of 2 sentences each), so most of every
    step would be padding; the masked-LM recipe has no sentence task to
    mislead. `dupe_factor` (the data job's) gives the short
    corpus several pairings; each dupe factor gets its own records.
    """
    from pipelines import pretraining_data

    text = os.path.join(args.out_dir, "task_text.txt")
    with open(args.train, encoding="utf-8") as f, open(text, "w") as out:
        sentences = [line.split("\t")[0].strip() for line in f.read().split("\n")[1:]]
        sentences = [s for s in sentences if s]
        for i in range(0, len(sentences), 8):
            out.write("\n".join(sentences[i : i + 8]) + "\n\n")
    records = os.path.join(args.out_dir, f"task_records_x{dupe_factor}")
    pretraining_data.run(
        [
            f"--input={text}",
            f"--vocab={args.vocab}",
            f"--output_dir={records}",
            f"--max_seq_length={args.pretrain_seq_length}",
            "--max_predictions_per_seq=20",
            f"--dupe_factor={dupe_factor}",
            "--num_shards=2",
            "--overwrite",
        ]
    )
    return records


def _budget_row(args, records, minutes, tapt_from=None, task_records=None):
    """One row: pretraining (or a task-adaptive phase over `tapt_from`'s
    run) and the same fine-tuning from it. `task_records`: the task text's
    records, the phase's data (`tapt_from`) or mixed into the corpus's
    (`--task_mix`)."""
    if tapt_from is None and task_records:
        # One schedule over the corpus and the task's text together; held
        # out of the corpus only, as every other row: comparable points.
        name = f"pretrain_{minutes:g}min_mix_x{args.task_mix}"
        data = ",".join(
            os.path.join(d, "pretraining-*.tfrecord*") for d in (records, task_records)
        )
        held_out = os.path.join(records, "eval")
        pre = pretrain(args, data, minutes, name, args.continue_from, held_out)
        pre["task_mix"] = args.task_mix
        pre["task_share"] = _task_share(records, task_records)
    elif tapt_from is None:
        name = f"pretrain_{minutes:g}min"
        pre = pretrain(args, records, minutes, name, args.continue_from)
    else:
        base = tapt_from["pretrain"]
        name = f"pretrain_{base['budget_minutes']:g}min_tapt_{minutes:g}min"
        # Held out of the corpus, as the base run's: comparable points.
        held_out = os.path.join(records, "eval")
        pre = pretrain(args, task_records, minutes, name, base["model_dir"], held_out)
        pre["tapt_from_minutes"] = base["budget_minutes"]
        pre["tapt_minutes"] = minutes
        pre["steps"] += base["steps"]
    return {"pretrain": pre, "finetune": finetune(args, pre["model_dir"], f"ft_{name}")}


def _task_share(records, task) -> float:
    """The task text's share of the mixed records (by record count)."""
    counts = []
    for d in (records, task):
        with open(os.path.join(d, "metadata.json")) as f:
            counts.append(json.load(f)["num_examples"])
    return round(counts[1] / sum(counts), 4)


def _budget_label(minutes, task_mix=0) -> str:
    return f"{minutes:g}" + (f" + task text mixed x{task_mix}" if task_mix else "")


def _tapt_label(base_minutes, minutes) -> str:
    return f"{base_minutes:g} + {minutes:g} task"


def _row_label(pre) -> str:
    """A row's key in results.json (what `--reuse` matches) and its label."""
    if "tapt_minutes" in pre:
        return _tapt_label(pre["tapt_from_minutes"], pre["tapt_minutes"])
    return _budget_label(pre["budget_minutes"], pre.get("task_mix", 0))


def budget_table(args, results) -> None:
    """The lift-versus-budget sweep: `results["budgets"]`, printed as Markdown."""
    path = os.path.join(args.out_dir, "results.json")
    earlier = {}
    if args.reuse and os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
    done = {_row_label(r["pretrain"]): r for r in earlier.get("budgets", [])}
    budget_labels = {
        minutes: _budget_label(minutes, args.task_mix)
        for minutes in [float(b) for b in args.budgets.split(",")]
    }
    tapt_pairs = [
        tuple(float(x) for x in pair.split(":"))
        for pair in args.tapt.split(",")
        if pair
    ]
    for base, minutes in tapt_pairs:
        if base not in budget_labels:
            # Before any training: the phase continues that budget's run.
            sys.exit(f"--tapt={base:g}:{minutes:g}: {base:g} is not one of --budgets")
    requested = set(budget_labels.values()) | {
        _tapt_label(base, minutes) for base, minutes in tapt_pairs
    }
    # --reuse keeps the earlier rows this run does not ask for: one
    # results.json (and one table) grows over runs instead of losing them.
    rows = results["budgets"] = [r for k, r in done.items() if k not in requested]
    records, data_seconds = pretraining_records(args)
    results["data_seconds"] = round(data_seconds, 1)
    # The baseline: random init, or the checkpoint that is pretrained further.
    results["random"] = earlier.get("random") or finetune(
        args,
        args.continue_from,
        "finetune_base" if args.continue_from else "finetune_random",
    )
    if args.random_mean_pooling:
        # The MLM-only recipe's runs fine-tune with mean pooling (their
        # [CLS] is untrained); random init with mean pooling too separates
        # the pooling's effect from pretraining's.
        results["random_mean"] = earlier.get("random_mean") or finetune(
            args, "", "finetune_random_mean", ["--set=finetune.pooling=mean"]
        )

    def save():
        with open(path, "w") as f:
            json.dump(results, f, indent=2, default=str)

    task_records = {}  # dupe factor -> records: one data job each per run

    def task(dupe_factor):
        if dupe_factor not in task_records:
            task_records[dupe_factor] = task_text_records(args, dupe_factor)
        return task_records[dupe_factor]

    by_minutes = {}
    for minutes, label in budget_labels.items():
        row = done.get(label) or _budget_row(
            args,
            records,
            minutes,
            task_records=task(args.task_mix) if args.task_mix else None,
        )
        by_minutes[minutes] = row
        rows.append(row)
        save()
    for base, minutes in tapt_pairs:
        row = done.get(_tapt_label(base, minutes)) or _budget_row(
            args, records, minutes, by_minutes[base], task(TAPT_DUPE_FACTOR)
        )
        rows.append(row)
        save()
    base = results["tfidf"]["accuracy"]
    rand, rlo, rhi = _median_range(results["random"])
    print(f"\nLift versus budget: {args.model}, SST-2 dev accuracy, median [min, max]")
    print(f"over {args.seeds} fine-tuning seeds; TF-IDF + LR {100 * base:.1f}")
    if "random_mean" in results:
        mean, mlo, mhi = _median_range(results["random_mean"])
        print(
            f"random init with mean pooling: {100 * mean:.1f} "
            f"[{100 * mlo:.1f}, {100 * mhi:.1f}]"
        )
    base_name = "random init"
    if args.continue_from:
        base_name = f"{args.continue_from} itself"
        print(f"continued pretraining of {args.continue_from}")
    print(
        "| budget (CPU-min) | recipe | steps | held-out MLM acc (start -> end) | "
        f"pooling | pretrained | {base_name} | lift (points) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        pre, ft = row["pretrain"], row["finetune"]
        med, lo, hi = _median_range(ft)
        print(
            f"| {_row_label(pre)} | {pre['recipe']} | {pre['steps']} | "
            f"{_fmt(pre.get('eval_mlm_accuracy_start'))} -> "
            f"{_fmt(pre.get('eval_mlm_accuracy'))} | {ft.get('pooling', '?')} | "
            f"{100 * med:.1f} [{100 * lo:.1f}, "
            f"{100 * hi:.1f}] | {100 * rand:.1f} [{100 * rlo:.1f}, {100 * rhi:.1f}]"
            f" | {100 * (med - rand):+.1f} |"
        )


def _fmt(value):
    return "-" if value is None else f"{value:.3f}"


def existing_pretraining(args) -> dict:
    """Describes `--init_checkpoint`; points `--model` at its sizes."""
    from configs.loader import RESOLVED_CONFIG_FILE

    model_dir = os.path.abspath(args.init_checkpoint)
    config = os.path.join(model_dir, RESOLVED_CONFIG_FILE)
    if not os.path.exists(config):
        sys.exit(f"--init_checkpoint {model_dir} has no {RESOLVED_CONFIG_FILE}")
    # Random init gets the same architecture as the pretrained encoder.
    args.model = config
    info = {"model_dir": model_dir}
    summary = os.path.join(model_dir, "pretrain_summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            info["summary"] = json.load(f)
    return info


def finetune(args, init_checkpoint, name, extra=()) -> dict:
    from model import finetune as finetune_lib

    argv = [
        f"--config={args.model}",
        "--config=configs/finetune/sst2.yaml",
        f"--train={args.train}",
        f"--eval={args.dev}",
        f"--model_dir={os.path.join(args.out_dir, name)}",
        f"--vocab={args.vocab}",
        f"--epochs={args.epochs}",
        f"--learning_rate={args.learning_rate}",
        f"--batch_size={args.batch_size}",
        f"--seeds={args.seeds}",
        f"--set=finetune.max_seq_length={args.max_seq_length}",
        # --model may be a run's config.yaml whose finetune section holds
        # another machine's resolved precision: pick this machine's.
        "--set=finetune.precision=auto",
        "--quiet",
    ] + [f"--set={override}" for override in args.finetune_set]
    if init_checkpoint:
        argv.append(f"--init_checkpoint={init_checkpoint}")
    argv += list(extra)
    start = time.time()
    result = finetune_lib.run(argv)
    result["seconds"] = round(time.time() - start, 1)
    return result


def _finetune_on_core(core, args, init_checkpoint, name) -> dict:
    # Pinned before TensorFlow is imported in this (spawned) process.
    os.sched_setaffinity(0, {core})
    return finetune(args, init_checkpoint, name)


def finetune_in_parallel(args, arms) -> dict:
    """Runs the arms at once, each in its own process on its own CPU core.

    On the 2-core machine this halves the wall time of the two arms (each
    TensorFlow process otherwise spreads over both cores and they would
    contend). Returns `{key: finetune result}`.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cores = sorted(os.sched_getaffinity(0))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(arms), mp_context=context) as pool:
        futures = {
            key: pool.submit(_finetune_on_core, cores[i % len(cores)], args, init, name)
            for i, (key, init, name) in enumerate(arms)
        }
        return {key: future.result() for key, future in futures.items()}


def combine(out_dirs) -> None:
    """One table over earlier runs (one per learning rate or train split).

    Prints each run's arms and lift, then, per training split, each arm at
    its own best run (selected on dev, like the best epoch and TF-IDF's C).
    """
    runs = []
    for out_dir in out_dirs:
        with open(os.path.join(out_dir, "results.json")) as f:
            runs.append(json.load(f))
    print("| train | lr | epochs | seeds | TF-IDF | pretrained | random init | lift |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        a, b = r["pretrained"], r["random"]
        print(
            f"| {os.path.basename(r['args']['train'])} ({a['num_train']}) | "
            f"{r['args']['learning_rate']:g} | {r['args']['epochs']} | "
            f"{len(a['seeds'])} | {100 * r['tfidf']['accuracy']:.1f} | "
            f"{100 * a['accuracy_mean']:.1f} ± {100 * a['accuracy_std']:.1f} | "
            f"{100 * b['accuracy_mean']:.1f} ± {100 * b['accuracy_std']:.1f} | "
            f"{100 * (a['accuracy_mean'] - b['accuracy_mean']):+.1f} |"
        )
    for train in sorted({r["args"]["train"] for r in runs}):
        same = [r for r in runs if r["args"]["train"] == train]
        best = {
            arm: max(same, key=lambda r: r[arm]["accuracy_mean"])
            for arm in ("pretrained", "random")
        }
        lift = best["pretrained"]["pretrained"]["accuracy_mean"]
        lift -= best["random"]["random"]["accuracy_mean"]
        print(
            f"{os.path.basename(train)}: each arm at its best setting: "
            f"pretrained {100 * best['pretrained']['pretrained']['accuracy_mean']:.1f}"
            f", random {100 * best['random']['random']['accuracy_mean']:.1f}, "
            f"lift {100 * lift:+.1f} (target >= +3.0); TF-IDF "
            f"{100 * max(r['tfidf']['accuracy'] for r in same):.1f}"
        )


def main(argv=None):
    args = _flags(argv)
    os.chdir(REPO)
    if args.combine:
        return combine(args.combine.split(","))
    os.makedirs(args.out_dir, exist_ok=True)
    if not glob.glob(args.corpus) or not os.path.exists(args.train):
        sys.exit(f"data not found ({args.corpus}, {args.train}): needs ../shared/data")
    results = {"quick": args.quick, "args": vars(args)}
    results["tfidf"] = tfidf_baseline(args.train, args.dev)
    print(
        f"TF-IDF + LR dev accuracy {results['tfidf']['accuracy']:.4f} "
        f"(C={results['tfidf']['C']:g}, best of {len(TFIDF_C_GRID)} on dev)",
        flush=True,
    )
    if args.baseline_only:
        return results
    if args.budgets:
        return budget_table(args, results)
    if args.init_checkpoint:
        results["pretrain"] = existing_pretraining(args)
    elif args.skip_pretrain:
        results["pretrain"] = {"model_dir": os.path.join(args.out_dir, "pretrain")}
    else:
        results["pretrain"] = pretrain(args)
    arms = [
        ("pretrained", results["pretrain"]["model_dir"], "finetune_pretrained"),
        ("random", "", "finetune_random"),
    ]
    if args.parallel:
        results.update(finetune_in_parallel(args, arms))
    else:
        for key, init, name in arms:
            results[key] = finetune(args, init, name)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)

    base = results["tfidf"]["accuracy"]
    label = " (REDUCED --quick budget: not the benchmark)" if args.quick else ""
    print(f"\nSST-2 dev accuracy{label}")
    summary = results["pretrain"].get("summary")
    if summary:
        # `model.pretrain`'s pretrain_summary.json: steps, seconds and the
        # held-out evaluation at the end (when the run had eval data).
        held_out = summary.get("eval", {}).get("eval_mlm_accuracy")
        how = f"{summary['step']} steps ({summary['seconds']:.0f} s)" + (
            f", held-out MLM accuracy {held_out:.3f}" if held_out is not None else ""
        )
    elif args.init_checkpoint:
        how = f"from {args.init_checkpoint}"
    else:
        how = f"{args.pretrain_steps} steps"
    print(f"bert model {args.model}, pretraining {how}")
    print("| model | dev accuracy | vs TF-IDF |")
    print("| --- | --- | --- |")
    print(f"| TF-IDF (1-2 grams) + logistic regression | {base:.4f} | 1.00x |")
    for key, name in (
        ("pretrained", "BERT, pretrained" + ("" if args.init_checkpoint else " here")),
        ("random", "BERT, random init"),
    ):
        r = results[key]
        print(
            f"| {name} ({len(r['seeds'])} seeds) | {r['accuracy_mean']:.4f} ± "
            f"{r['accuracy_std']:.4f} | {r['accuracy_mean'] / base:.2f}x |"
        )
    lift = results["pretrained"]["accuracy_mean"] - results["random"]["accuracy_mean"]
    print(f"pretraining lift: {100 * lift:+.1f} points (target >= +3.0)")


if __name__ == "__main__":
    main()
