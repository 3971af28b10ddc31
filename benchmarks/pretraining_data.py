"""Benchmark: `pipelines.pretraining_data` vs the reference generator.

The reference is google-research/bert's algorithm as shipped in the
`tf-models-official` package (`official.nlp.data.create_pretraining_data`),
installed by this script into its own venv (`benchmarks/.venv-ref`; its
newest release pins tensorflow 2.20, so it cannot share our venv). Both
read the same decompressed text (the reference cannot read `.gz`) with the
same flags (`--max_seq_length=128 --max_predictions_per_seq=20
--masked_lm_prob=0.15 --dupe_factor=5`, uncased vocab) and are timed as
whole processes: wall time, instances/s and peak RSS (summed over the
process tree, sampled every 0.1 s, so Beam's worker processes count).

    .venv/bin/python benchmarks/pretraining_data.py            # 10 MB + 40 MB
    .venv/bin/python benchmarks/pretraining_data.py --sizes=10 --skip_ref

Targets (issue 2), on the 40 MB corpus: >= 10x the reference's instances/s
with 2 workers, >= 5x with 1 worker; our peak RSS from 10 MB to 40 MB
<= 1.2x. Ratios are computed against the reference run in the same
invocation; numbers from a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
REF_VENV = os.path.join(ROOT, "benchmarks", ".venv-ref")
REF_PACKAGE = "tf-models-official==2.20.0"
FLAGS = {
    "max_seq_length": 128,
    "max_predictions_per_seq": 20,
    "masked_lm_prob": 0.15,
    "dupe_factor": 5,
}


def ensure_reference_venv() -> str:
    """Creates benchmarks/.venv-ref with tf-models-official (big: TF 2.20)."""
    python = os.path.join(REF_VENV, "bin", "python")
    if os.path.exists(os.path.join(REF_VENV, ".installed")):
        return python
    print(f"installing {REF_PACKAGE} into {REF_VENV} (large download) ...")
    subprocess.check_call([sys.executable, "-m", "venv", REF_VENV])
    subprocess.check_call([python, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    subprocess.check_call([python, "-m", "pip", "install", "-q", REF_PACKAGE])
    open(os.path.join(REF_VENV, ".installed"), "w").close()
    return python


def prepare_inputs(work: str, sizes: list[int]) -> dict[int, str]:
    """Decompresses the corpus shards: 10 -> one shard, 40 -> all four."""
    shards = sorted(glob.glob(os.path.join(SHARED, "corpus", "*.txt.gz")))
    if not shards:
        sys.exit(f"error: no corpus shards under {SHARED}/corpus")
    inputs = {}
    for size in sizes:
        path = os.path.join(work, f"corpus-{size}mb.txt")
        if not os.path.exists(path):
            with open(path, "wb") as out:
                for i, shard in enumerate(shards[: max(1, size // 10)]):
                    if i:
                        out.write(b"\n")  # a blank line between files' documents
                    with gzip.open(shard, "rb") as f:
                        shutil.copyfileobj(f, out)
        inputs[size] = path
    return inputs


def _tree_rss(root_pid: int) -> int:
    """Sum of VmRSS (bytes) of `root_pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def timed(cmd: list[str], log: str) -> tuple[float, int, float]:
    """Runs `cmd`; returns (wall seconds, peak tree RSS bytes, CPU seconds).

    CPU seconds (user + system of the process and the children it waited
    for) are less sensitive than wall time to other load on the machine.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = [0]
    with open(log, "w") as out:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

        def poll():
            while proc.poll() is None:
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                time.sleep(0.1)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        rc = proc.wait()
        wall = time.time() - start
        thread.join()
    if rc:
        sys.exit(f"error: {' '.join(cmd[:3])} ... failed (rc {rc}), see {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, peak[0], cpu


def count_records(pattern: str) -> int:
    import tensorflow as tf

    files = sorted(glob.glob(pattern))
    return int(tf.data.TFRecordDataset(files).reduce(0, lambda n, _: n + 1).numpy())


def run_reference(python: str, corpus: str, vocab: str, work: str, tag: str):
    out = os.path.join(work, f"ref-{tag}.tfrecord")
    cmd = [
        python,
        "-m",
        "official.nlp.data.create_pretraining_data",
        f"--input_file={corpus}",
        f"--output_file={out}",
        f"--vocab_file={vocab}",
        "--do_lower_case=True",
        "--random_seed=12345",
    ] + [f"--{k}={v}" for k, v in FLAGS.items()]
    wall, rss, cpu = timed(cmd, os.path.join(work, f"ref-{tag}.log"))
    return wall, rss, count_records(out), cpu


def run_ours(corpus: str, vocab: str, work: str, tag: str, workers: int):
    out = os.path.join(work, f"ours-{tag}-w{workers}")
    cmd = [
        sys.executable,
        "-m",
        "pipelines.pretraining_data",
        f"--input={corpus}",
        f"--vocab={vocab}",
        f"--output_dir={out}",
        "--overwrite",
        "--seed=12345",
    ] + [f"--{k}={v}" for k, v in FLAGS.items()]
    if workers > 1:
        cmd += [
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}",
        ]
    wall, rss, cpu = timed(cmd, os.path.join(work, f"ours-{tag}-w{workers}.log"))
    with open(os.path.join(out, "metadata.json")) as f:
        return wall, rss, json.load(f)["num_examples"], cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,40", help="MB: 10 (one shard), 40 (all)")
    p.add_argument("--workers", default="1,2", help="our DirectRunner workers")
    p.add_argument("--skip_ref", action="store_true", help="only our job")
    p.add_argument("--work_dir", default="/tmp/bench-pretraining-data")
    p.add_argument("--vocab", default=os.path.join(ROOT, "data", "vocab.txt"))
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    os.makedirs(args.work_dir, exist_ok=True)
    inputs = prepare_inputs(args.work_dir, sizes)
    ref_python = None if args.skip_ref else ensure_reference_venv()

    rows = []
    for size in sizes:
        tag = f"{size}mb"
        ref = None
        if ref_python:
            ref = run_reference(
                ref_python, inputs[size], args.vocab, args.work_dir, tag
            )
            rows.append((f"reference {size} MB", *ref, None, None))
            print(_row(rows[-1]), flush=True)
        for w in workers:
            ours = run_ours(inputs[size], args.vocab, args.work_dir, tag, w)
            speedup = (ours[2] / ours[0]) / (ref[2] / ref[0]) if ref else None
            cpu_ratio = (ours[2] / ours[3]) / (ref[2] / ref[3]) if ref else None
            rows.append((f"ours {size} MB, {w} worker(s)", *ours, speedup, cpu_ratio))
            print(_row(rows[-1]), flush=True)

    print(
        "\n| run | wall s | instances | instances/s | peak RSS MB | CPU s "
        "| instances/CPU-s | vs reference (wall) | vs reference (CPU) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(_row(row))
    for w in workers:
        rss = {r[0]: r[2] for r in rows if r[0].startswith("ours")}
        a, b = rss.get(f"ours 10 MB, {w} worker(s)"), rss.get(
            f"ours 40 MB, {w} worker(s)"
        )
        if a and b:
            print(f"our peak RSS 40 MB / 10 MB with {w} worker(s): {b / a:.2f}x")


def _row(row) -> str:
    name, wall, rss, n, cpu, speedup, cpu_ratio = row
    vs = f"{speedup:.1f}x" if speedup else "-"
    vs_cpu = f"{cpu_ratio:.1f}x" if cpu_ratio else "-"
    return (
        f"| {name} | {wall:.1f} | {n} | {n / wall:,.0f} | {rss / 2**20:,.0f} "
        f"| {cpu:.1f} | {n / cpu:,.0f} | {vs} | {vs_cpu} |"
    )


if __name__ == "__main__":
    main()
