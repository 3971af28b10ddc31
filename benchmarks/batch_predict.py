"""Benchmark: `pipelines.batch_predict` vs the same SavedModel in a tight loop.

    nice -n 10 .venv/bin/python benchmarks/batch_predict.py \\
        [--model_dir=FT] [--sentences=100000] [--out_dir=/tmp/bench_batch_predict]

1. The model: `--model_dir` (a `model.finetune` directory), else bert_tiny
   fine-tuned here by `python -m model.finetune` on the shipped SST-2
   sample (3,000 sentences, 3 epochs, eval on the 872-sentence dev set),
   then exported by `python -m model.export`.
2. Input: `--sentences` rows of SST-2 sentences (the sentence-level train
   split and dev from ../shared/data, else the shipped sample), repeated
   in a fixed shuffled order, as a `sentence<TAB>label` TSV.
3. Tight loop (its own process): `tf.saved_model.load` +
   `serving_default(text=...)` over in-memory lists, one pass per batch
   size on the first 20,000 sentences, then all of them at the best one.
4. The Beam job, one worker (DirectRunner): `python -m
   pipelines.batch_predict ... --label_column=label`; sentences/s from its
   own pipeline time (`summary.json` `seconds`: model load, reading,
   scoring, writing, evaluation) and from the whole process's wall time.
   Peak RSS of each process tree, sampled every 0.1 s.
5. Accuracy: the job on the SST-2 dev set vs `model.finetune`'s
   `eval_metrics.json` for the same model (should be equal).
6. Long texts (`--long_reviews=N`): N reviews of 6-12 dev sentences of one
   label each, scored with `--long_text=truncate` and `=average`.

Ratios are measured in one invocation; the machine may be shared, so the
load average is printed with the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import host  # noqa: E402
from benchmarks.pretraining_data import timed  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data", "sentiment")
DEV = os.path.join(ROOT, "data", "sst2_dev.tsv")  # the GLUE SST-2 dev set
SWEEP_SENTENCES = 20_000


def read_tsv(path: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r[0], r[1]) for r in rows[1:]]


def write_tsv(path: str, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{t}\t{y}\n" for t, y in rows)
    return path


def source_sentences() -> tuple[list, str]:
    shared = os.path.join(SHARED, "sst2_sentences_train.tsv")
    if os.path.exists(shared):
        return read_tsv(shared) + read_tsv(DEV), "SST-2 sentence train + dev"
    sample = os.path.join(ROOT, "data", "sst2_train_sample.tsv")
    return read_tsv(sample) + read_tsv(DEV), "shipped SST-2 sample + dev"


def make_model(out_dir: str) -> str:
    """Fine-tunes bert_tiny on the shipped sample; returns its model_dir."""
    model_dir = os.path.join(out_dir, "model")
    if not os.path.exists(os.path.join(model_dir, "eval_metrics.json")):
        subprocess.check_call(
            [
                sys.executable,
                "-m",
                "model.finetune",
                "--config=configs/pretrain/bert_tiny.yaml",
                "--config=configs/finetune/sst2.yaml",
                "--train=data/sst2_train_sample.tsv",
                f"--eval={DEV}",
                "--vocab=data/vocab.txt",
                f"--model_dir={model_dir}",
                "--epochs=3",
                "--learning_rate=3e-4",
                "--quiet",
            ],
            cwd=ROOT,
        )
    return model_dir


def export(model_dir: str, out_dir: str) -> str:
    serving = os.path.join(out_dir, "serving")
    subprocess.check_call(
        [
            sys.executable,
            "-m",
            "model.export",
            f"--model_dir={model_dir}",
            f"--export_dir={serving}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return serving


def tight_loop(saved_model: str, tsv: str, batch_sizes: list[int], out: str):
    """(In its own process.) Sentences/s of serving_default per batch size."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    texts = [t for t, _ in read_tsv(tsv)]
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]

    def rate(batch_size, sentences):
        serve(text=tf.constant(sentences[:batch_size]))  # trace / warm up
        start = time.perf_counter()
        for i in range(0, len(sentences), batch_size):
            serve(text=tf.constant(sentences[i : i + batch_size]))[
                "probabilities"
            ].numpy()
        return len(sentences) / (time.perf_counter() - start)

    sweep = {b: rate(b, texts[:SWEEP_SENTENCES]) for b in batch_sizes}
    best = max(sweep, key=sweep.get)
    result = {"sweep": sweep, "best_batch_size": best, "rate": rate(best, texts)}
    with open(out, "w") as f:
        json.dump(result, f)


def run_job(saved_model, tsv, out, log, *extra):
    cmd = [
        sys.executable,
        "-m",
        "pipelines.batch_predict",
        f"--saved_model={saved_model}",
        f"--input={tsv}",
        f"--output_dir={out}",
        "--label_column=label",
        "--overwrite",
        *extra,
    ]
    wall, rss, cpu = timed(cmd, log)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return summary, wall, rss, cpu


def long_reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n reviews of 6-12 SST-2 dev sentences that share one label."""
    path = os.path.join(SHARED, "sst2_dev.tsv")
    rows = read_tsv(path if os.path.exists(path) else DEV)
    by_label: dict = {}
    for text, label in rows:
        by_label.setdefault(label, []).append(text)
    rng = random.Random(seed)
    reviews = []
    for i in range(n):
        label = sorted(by_label)[i % len(by_label)]
        k = rng.randint(6, 12)
        reviews.append((" ".join(rng.sample(by_label[label], k)), label))
    return reviews


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", default="", help="default: fine-tune here")
    parser.add_argument("--sentences", type=int, default=100_000)
    parser.add_argument("--batch_sizes", default="16,32,64,128,256,512")
    parser.add_argument("--long_reviews", type=int, default=1000)
    parser.add_argument("--out_dir", default="/tmp/bench_batch_predict")
    parser.add_argument(
        "--job_batches",
        default="",
        help="also run the job at these MIN:MAX batch sizes (comma-separated)",
    )
    parser.add_argument("--tight_loop", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tight_loop:
        saved_model, tsv, out = args.tight_loop
        tight_loop(saved_model, tsv, [int(b) for b in args.batch_sizes.split(",")], out)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.makedirs(args.out_dir, exist_ok=True)
    out = args.out_dir
    print(f"machine: {host.describe()}", flush=True)

    model_dir = args.model_dir or make_model(out)
    saved_model = export(model_dir, out)
    with open(os.path.join(model_dir, "eval_metrics.json")) as f:
        finetune_accuracy = json.load(f)["accuracy_mean"]
    with open(os.path.join(model_dir, "config.yaml")) as f:
        model_desc = " ".join(
            line.strip()
            for line in f
            if line.strip().startswith(("num_layers", "hidden_dim"))
        )

    sentences, source = source_sentences()
    rng = random.Random(0)
    rows = [sentences[i % len(sentences)] for i in range(args.sentences)]
    rng.shuffle(rows)
    tsv = write_tsv(os.path.join(out, f"sentences-{args.sentences}.tsv"), rows)
    print(f"input: {args.sentences} rows of {source} -> {tsv}", flush=True)

    tight_json = os.path.join(out, "tight_loop.json")
    t_wall, t_rss, t_cpu = timed(
        [
            sys.executable,
            os.path.abspath(__file__),
            f"--batch_sizes={args.batch_sizes}",
            "--tight_loop",
            saved_model,
            tsv,
            tight_json,
        ],
        os.path.join(out, "tight_loop.log"),
    )
    with open(tight_json) as f:
        tight = json.load(f)
    print(
        "tight loop sentences/s by batch size: "
        + ", ".join(f"{b}: {r:.0f}" for b, r in tight["sweep"].items()),
        flush=True,
    )
    settings = [("defaults", [])] + [
        (
            f"batch {b}",
            [
                f"--min_batch_size={b.split(':')[0]}",
                f"--max_batch_size={b.split(':')[1]}",
            ],
        )
        for b in args.job_batches.split(",")
        if b
    ]
    jobs = []
    for name, flags in settings:
        summary, j_wall, j_rss, _ = run_job(
            saved_model,
            tsv,
            os.path.join(out, "job"),
            os.path.join(out, "job.log"),
            *flags,
        )
        assert summary["rows_predicted"] == args.sentences, summary
        jobs.append((name, summary, j_wall, j_rss))
        print(
            f"job ({name}): {args.sentences / summary['seconds']:.0f} sentences/s "
            f"(pipeline), load {os.getloadavg()[0]:.2f}",
            flush=True,
        )

    dev_summary, *_ = run_job(
        saved_model, DEV, os.path.join(out, "dev"), os.path.join(out, "dev.log")
    )
    dev_accuracy = dev_summary["evaluation"]["accuracy"]

    print()
    print(
        f"model: {model_dir} ({model_desc}), exported seq {summary['max_seq_length']}"
    )
    print(f"machine: {host.describe()}")
    print()
    print("| run | sentences/s | vs tight loop | wall s | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| tight loop, batch {tight['best_batch_size']} (best) | "
        f"{tight['rate']:,.0f} | 1.00x | {args.sentences / tight['rate']:.1f} "
        f"(process {t_wall:.1f}) | {t_rss / 2**20:,.0f} MB |"
    )
    for name, summary, j_wall, j_rss in jobs:
        rate, wall_rate = args.sentences / summary["seconds"], args.sentences / j_wall
        print(
            f"| Beam job, 1 worker, {name}: pipeline time | {rate:,.0f} | "
            f"**{rate / tight['rate']:.2f}x** | {summary['seconds']:.1f} | "
            f"{j_rss / 2**20:,.0f} MB |"
        )
        print(
            f"| Beam job, 1 worker, {name}: whole process | {wall_rate:,.0f} | "
            f"{wall_rate / tight['rate']:.2f}x | {j_wall:.1f} | |"
        )
    print()
    print(
        f"SST-2 dev accuracy: job {dev_accuracy:.6f}, model.finetune "
        f"{finetune_accuracy:.6f} -> "
        + ("equal" if dev_accuracy == finetune_accuracy else "DIFFERENT")
    )

    if args.long_reviews:
        reviews = long_reviews(args.long_reviews)
        long_tsv = write_tsv(os.path.join(out, "long_reviews.tsv"), reviews)
        print()
        print(
            f"long reviews: {len(reviews)} of 6-12 SST-2 dev sentences of one label "
            f"(model max_seq_length {summary['max_seq_length']})"
        )
        print("| --long_text | accuracy | macro-F1 | windows | job s |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for mode in ("truncate", "average"):
            s, *_ = run_job(
                saved_model,
                long_tsv,
                os.path.join(out, f"long-{mode}"),
                os.path.join(out, f"long-{mode}.log"),
                f"--long_text={mode}",
            )
            e = s["evaluation"]
            windows = s["windows_scored"] or s["rows_predicted"]
            print(
                f"| {mode} | {e['accuracy']:.4f} | {e['macro_f1']:.4f} | "
                f"{windows} | {s['seconds']:.1f} |"
            )
    print(f"\nmachine at the end: {host.describe()}")


if __name__ == "__main__":
    main()
