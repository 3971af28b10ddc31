"""Benchmark: `pipelines.vocab` vs tensorflow-text's in-memory learner.

    python benchmarks/vocab.py [--train_shards=3] [--vocab_size=30522]
        [--held_out_lines=20000] [--workers=1,2]

On `../shared/data/corpus` (skipped when absent): learns a vocabulary from
the first `train_shards` shards with

* ours: `python -m pipelines.vocab` on the DirectRunner in
  `multi_processing` mode with 1 and 2 workers;
* baseline: `tensorflow_text.tools.wordpiece_vocab.bert_vocab_from_dataset`
  over a `tf.data.TextLineDataset` (all counts in one process), with the
  same reserved tokens, lower-casing and the learner's default settings;

each in its own subprocess, measuring wall time and peak RSS (largest
single process, from `wait4`, and the sum over the process tree sampled
every 0.2 s). Then tokenizes held-out text (the first `held_out_lines`
non-blank lines of the last shard) with each vocabulary and with Google's
`bert-base-uncased` vocabulary through `configs.tokenization.build_tokenizer`
and reports the [UNK] rate and wordpieces per word. Ratios are against the
baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
CORPUS = os.path.join(DATA, "corpus")
GOOGLE_VOCAB = os.path.join(DATA, "vocab", "bert-base-uncased-vocab.txt")
sys.path.insert(0, ROOT)  # run as a script from anywhere
RESERVED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# === Measuring a subprocess ===
def _tree_rss_kib(root_pid: int) -> int:
    """Sum of VmRSS (KiB) over `root_pid` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        pid = int(entry)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = pages * os.sysconf("SC_PAGE_SIZE") // 1024
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(cmd: list[str], log_path: str) -> dict:
    """Runs `cmd`; returns wall seconds, peak RSS (MiB) and its exit code."""
    with open(log_path, "w") as log:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        peak_tree = [0]
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                peak_tree[0] = max(peak_tree[0], _tree_rss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4: the child's rusage, including its waited-for descendants.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        done.set()
        sampler.join()
    return {
        "wall_s": wall,
        # CPU seconds (user + system) of the child and its waited-for
        # descendants: less sensitive than wall time to a busy machine.
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "peak_tree_rss_mib": peak_tree[0] / 1024,
        "exit": os.waitstatus_to_exitcode(status),
    }


# === The baseline, run as a child: python benchmarks/vocab.py --baseline ===
def run_baseline(files: list[str], output: str, vocab_size: int) -> None:
    import tensorflow as tf
    from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset

    dataset = tf.data.TextLineDataset(files, compression_type="GZIP").batch(1024)
    tokens = bert_vocab_from_dataset.bert_vocab_from_dataset(
        dataset,
        vocab_size=vocab_size,
        reserved_tokens=RESERVED,
        bert_tokenizer_params={"lower_case": True},
    )
    with open(output, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")


# === Held-out evaluation ===
def held_out_lines(path: str, limit: int) -> list[str]:
    lines = []
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line:
                lines.append(line)
                if len(lines) >= limit:
                    break
    return lines


def evaluate(vocab_path: str, lines: list[str]) -> dict:
    """[UNK] rate (per wordpiece and per word) and wordpieces per word."""
    import tensorflow as tf

    from configs import features
    from configs.tokenization import build_tokenizer, build_word_splitter

    tokens = features.read_vocab(vocab_path)
    tokenizer = build_tokenizer(tokens, do_lower_case=True)
    unk = tokens.index(features.UNK)
    words = build_word_splitter(True).tokenize(lines)
    # Tokenizing the words (not the lines) keeps the word boundaries.
    pieces = tokenizer.tokenize(words.flat_values)
    ids = pieces.flat_values.numpy()
    word_has_unk = tf.reduce_any(tf.equal(pieces, unk), axis=1).numpy()
    num_words = int(words.flat_values.shape[0])
    return {
        "vocab_size": len(tokens),
        "unk_per_piece": float((ids == unk).sum() / max(len(ids), 1)),
        "unk_per_word": float(word_has_unk.mean()) if num_words else 0.0,
        "pieces_per_word": float(len(ids) / max(num_words, 1)),
        "held_out_words": num_words,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_shards", type=int, default=3)
    parser.add_argument("--vocab_size", type=int, default=30522)
    parser.add_argument("--held_out_lines", type=int, default=20000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.baseline:  # child mode
        run_baseline(args.files.split(","), args.output, args.vocab_size)
        return 0

    shards = sorted(glob.glob(os.path.join(CORPUS, "*.txt.gz")))
    if len(shards) < 2:
        print(f"skipped: corpus not found under {CORPUS}")
        return 0
    train = shards[: min(args.train_shards, len(shards) - 1)]
    held_out_path = shards[-1]
    work = tempfile.mkdtemp(prefix="vocab-bench-")
    print(
        f"train: {len(train)} shard(s), {sum(os.path.getsize(f) for f in train)} "
        f"bytes gz; held out: first {args.held_out_lines} lines of "
        f"{os.path.basename(held_out_path)}; vocab_size {args.vocab_size}; "
        f"{os.cpu_count()} CPUs (shared machine, load average "
        f"{os.getloadavg()[0]:.1f})"
    )

    runs = {}
    for n in [int(w) for w in args.workers.split(",") if w]:
        out = os.path.join(work, f"ours-{n}w.txt")
        cmd = [
            sys.executable,
            "-m",
            "pipelines.vocab",
            f"--input={','.join(train)}",
            f"--output={out}",
            f"--vocab_size={args.vocab_size}",
            "--runner=DirectRunner",
            f"--direct_num_workers={n}",
            "--direct_running_mode=multi_processing",
        ]
        runs[f"ours, {n} worker(s)"] = (out, measure(cmd, out + ".log"))
    out = os.path.join(work, "tf-text.txt")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--baseline",
        f"--files={','.join(train)}",
        f"--output={out}",
        f"--vocab_size={args.vocab_size}",
    ]
    runs["bert_vocab_from_dataset"] = (out, measure(cmd, out + ".log"))
    runs["google bert-base-uncased"] = (GOOGLE_VOCAB, None)

    lines = held_out_lines(held_out_path, args.held_out_lines)
    base = runs["bert_vocab_from_dataset"][1]
    print(
        f"\n{'vocabulary':28} {'wall s':>7} {'x base':>6} {'cpu s':>7} "
        f"{'RSS MiB':>8} "
        f"{'tree MiB':>8} {'size':>6} {'UNK/piece':>9} {'UNK/word':>8} "
        f"{'pieces/word':>11}"
    )
    results = {}
    for name, (path, m) in runs.items():
        if m is not None and m["exit"] != 0:
            print(f"{name}: failed (exit {m['exit']}), see {path}.log")
            continue
        q = evaluate(path, lines)
        results[name] = {"run": m, "quality": q}
        timing = (
            f"{m['wall_s']:7.1f} {base['wall_s'] / m['wall_s']:6.2f} "
            f"{m['cpu_s']:7.1f} "
            f"{m['peak_rss_mib']:8.0f} {m['peak_tree_rss_mib']:8.0f}"
            if m
            else f"{'-':>7} {'-':>6} {'-':>7} {'-':>8} {'-':>8}"
        )
        print(
            f"{name:28} {timing} {q['vocab_size']:6d} "
            f"{q['unk_per_piece']:9.5f} {q['unk_per_word']:8.5f} "
            f"{q['pieces_per_word']:11.3f}"
        )
    for name, (path, m) in runs.items():
        if m is not None and os.path.exists(path + ".log"):
            with open(path + ".log") as f:
                summary = [line for line in f if line.startswith("wrote ")]
            if summary:
                print(f"{name}: {summary[-1].strip()}")
    print("x base = baseline wall time / this wall time (higher is faster)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
