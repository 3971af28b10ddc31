"""Benchmark: `pipelines.pretraining_data` on each local Beam engine.

Runs the job's own command (`python -m pipelines.pretraining_data`) on
DirectRunner (the baseline, measured in the same invocation) and on every
engine `make engines` installed (Prism; Flink and Spark when their job
server jars are there), one run at a time, and measures the whole process
tree (the job, the engine's processes, their workers) by polling /proc
every 0.2 s:

- wall seconds;
- CPU seconds: user + system of every process seen in the tree, each at
  its last sample (a process's last < 0.2 s can be missed);
- peak RSS: the largest sum of VmRSS over the tree at one sample, and
  how it splits over the processes (by name) at that sample;
- peak disk: the bytes under the job's output directory (records and the
  run's temporary spill and piece files), every 2 s.

The engine start cost is the wall time of the same command on a
three-document corpus (start the engine + a worker, run, stop), also per
engine. Every run's records are checked against DirectRunner's: same count
and the same order-independent digest (sum of the records' hashes).

    .venv/bin/python benchmarks/engines.py                 # 40 MB, every engine
    .venv/bin/python benchmarks/engines.py --copies=25 --dupe_factor=1 \\
        --engines=direct,prism                             # ~1 GB

The machine may be shared: the load average is printed with every row and
ratios against DirectRunner (same invocation) are what to compare.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
import time

import apache_beam as beam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "..", "shared", "data", "corpus", "*.txt.gz")
ENGINES_DIR = os.environ.get("ENGINES_DIR", os.path.join(ROOT, ".engines"))
FLINK_VERSION = "1.20"  # the Makefile's FLINK_VERSION
TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog.\nIt was not amused.\n\n"
    "A second document starts here.\nIt talks about the sea.\n\n"
    "Short third document.\nThis is its second line.\n"
)


def engine_flags(engine: str) -> list[str] | None:
    """The Beam flags of `engine` (README "Runners"); None if not installed."""
    jars = os.path.join(ENGINES_DIR, "jars")
    version = beam.__version__
    if engine == "direct":
        return ["--runner=DirectRunner"]
    if engine == "prism":
        prism = os.path.join(ENGINES_DIR, "bin", "prism")
        return (
            ["--runner=PrismRunner", f"--prism_location={prism}"]
            if os.path.exists(prism)
            else None
        )
    if engine == "flink":
        jar = os.path.join(
            jars, f"beam-runners-flink-{FLINK_VERSION}-job-server-{version}.jar"
        )
        return (
            [
                "--runner=FlinkRunner",
                "--flink_master=[local]",
                f"--flink_version={FLINK_VERSION}",
                f"--flink_job_server_jar={jar}",
                "--environment_type=LOOPBACK",
                "--parallelism=2",
            ]
            if os.path.exists(jar)
            else None
        )
    if engine == "spark":
        jar = os.path.join(jars, f"beam-runners-spark-3-job-server-{version}.jar")
        return (
            [
                "--runner=SparkRunner",
                "--spark_master_url=local[2]",
                f"--spark_job_server_jar={jar}",
                "--environment_type=LOOPBACK",
            ]
            if os.path.exists(jar)
            else None
        )
    raise ValueError(f"unknown engine {engine}")


def _tree(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _sample(pids: list[int], cpu: dict) -> tuple[int, dict]:
    """(tree RSS in bytes now, {process name: RSS bytes}); updates `cpu`
    {(pid, start): seconds}."""
    rss, by_name = 0, {}
    for pid in pids:
        try:
            stat = open(f"/proc/{pid}/stat").read()
            name = stat.split("(", 1)[1].rsplit(")", 1)[0]
            fields = stat.rsplit(")", 1)[1].split()
            # utime, stime are fields 14, 15; starttime 22 (1-based, man 5 proc)
            cpu[(pid, fields[19])] = (int(fields[11]) + int(fields[12])) / _TICK
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    value = int(line.split()[1]) * 1024
                    rss += value
                    by_name[name] = by_name.get(name, 0) + value
                    break
        except (OSError, IndexError, ValueError):
            continue
    return rss, by_name


def _disk_bytes(directory: str) -> int:
    """Bytes of the files under `directory` (the outputs and temp files)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def timed(cmd: list[str], log: str, out_dir: str | None = None) -> dict:
    """Runs `cmd`; returns wall s, tree CPU s, peak tree RSS (and which
    processes held it), peak bytes under `out_dir` (every 2 s), load."""
    peak, at_peak, disk, cpu = [0], [{}], [0], {}
    load_before = os.getloadavg()[0]
    with open(log, "w") as out:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

        def poll():
            last_disk = 0.0
            while proc.poll() is None:
                rss, by_name = _sample(_tree(proc.pid), cpu)
                if rss > peak[0]:
                    peak[0], at_peak[0] = rss, by_name
                if out_dir and time.time() - last_disk > 2:
                    disk[0] = max(disk[0], _disk_bytes(out_dir))
                    last_disk = time.time()
                time.sleep(0.2)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        rc = proc.wait()
        wall = time.time() - start
        thread.join()
    if rc:
        tail = open(log).read()[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (rc {rc}):\n{tail}")
    return {
        "wall_s": wall,
        "cpu_s": sum(cpu.values()),
        "peak_rss_mb": peak[0] / 2**20,
        "peak_rss_by_process_mb": {
            k: round(v / 2**20) for k, v in sorted(at_peak[0].items())
        },
        "peak_disk_mb": disk[0] / 2**20,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def records_digest(out_dir: str) -> tuple[int, str]:
    """(record count, order-independent digest of the records' bytes)."""
    count, total = 0, 0
    for path in sorted(glob.glob(os.path.join(out_dir, "pretraining-*.tfrecord"))):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            digest = hashlib.blake2b(data[i + 12 : i + 12 + n], digest_size=8)
            total = (total + int.from_bytes(digest.digest(), "little")) % 2**64
            count += 1
            i += 16 + n
    return count, f"{total:016x}"


def job(engine, corpus, vocab, out, log, dupe_factor, num_shards) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "pipelines.pretraining_data",
        f"--input={corpus}",
        f"--vocab={vocab}",
        f"--output_dir={out}",
        "--overwrite",
        "--seed=12345",
        "--max_seq_length=128",
        "--max_predictions_per_seq=20",
        f"--dupe_factor={dupe_factor}",
        f"--num_shards={num_shards}",
        *engine_flags(engine),
    ]
    row = timed(cmd, log, out)
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    row["instances"] = meta["num_examples"]
    row["counters"] = bool(meta.get("counters"))
    row["records"], row["digest"] = records_digest(out)
    return row


def corpus_copies(work: str, copies: int, corpus: str = CORPUS) -> str:
    """A glob over `copies` copies of the corpus shards whose documents are
    all distinct: copy 0 is the corpus itself (a symlink), copy k >= 1 ends
    every document with one more sentence, `Copy k.` (gzip level 1). The
    job keeps one copy of identical documents, so plain copies would add
    reading and tokenizing but no pairs; these scale every stage."""
    shards = sorted(glob.glob(corpus))
    if not shards:
        sys.exit(f"error: no corpus shards match {corpus}")
    if copies == 1:
        return corpus
    d = os.path.join(work, f"corpus-x{copies}-distinct")
    os.makedirs(d, exist_ok=True)
    for shard in shards:
        name = os.path.basename(shard)
        first = os.path.join(d, f"copy000-{name}")
        if not os.path.exists(first):
            os.symlink(os.path.abspath(shard), first)
        todo = [
            k
            for k in range(1, copies)
            if not os.path.exists(os.path.join(d, f"copy{k:03d}-{name}"))
        ]
        if not todo:
            continue
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            docs = [doc.strip("\n") for doc in f.read().split("\n\n")]
        docs = [doc for doc in docs if doc.strip()]
        for k in todo:
            text = "\n\n".join(f"{doc}\nCopy {k}." for doc in docs) + "\n"
            path = os.path.join(d, f"copy{k:03d}-{name}")
            with gzip.open(path + ".tmp", "wt", encoding="utf-8", compresslevel=1) as f:
                f.write(text)
            os.rename(path + ".tmp", path)
    return os.path.join(d, "*.txt.gz")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="direct,prism,flink,spark")
    p.add_argument("--corpus", default=CORPUS, help="glob of the 40 MB corpus")
    p.add_argument("--copies", type=int, default=1, help="corpus copies (25: ~1 GB)")
    p.add_argument("--dupe_factor", type=int, default=5)
    p.add_argument("--num_shards", type=int, default=16)
    p.add_argument("--vocab", default=os.path.join(ROOT, "data", "vocab.txt"))
    p.add_argument("--work_dir", default="/tmp/bench-engines")
    p.add_argument("--skip_start", action="store_true", help="no start-cost runs")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    corpus = corpus_copies(args.work_dir, args.copies, args.corpus)
    tiny = os.path.join(args.work_dir, "tiny.txt")
    with open(tiny, "w") as f:
        f.write(TINY_CORPUS)
    size_mb = (
        sum(os.path.getsize(os.path.realpath(p)) for p in glob.glob(corpus)) / 2**20
    )
    print(
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, corpus {corpus} ({size_mb:.0f} MB gzip, "
        f"{args.copies} cop{'y' if args.copies == 1 else 'ies'}), dupe_factor "
        f"{args.dupe_factor}, beam {beam.__version__}",
        flush=True,
    )
    rows = []
    for engine in args.engines.split(","):
        if engine_flags(engine) is None:
            print(f"{engine}: not installed (run `make engines`); skipped", flush=True)
            continue
        tag = f"{engine}-x{args.copies}"
        start = None
        if not args.skip_start:
            start = job(
                engine,
                tiny,
                args.vocab,
                os.path.join(args.work_dir, f"{tag}-tiny"),
                os.path.join(args.work_dir, f"{tag}-tiny.log"),
                1,
                2,
            )["wall_s"]
        try:
            row = job(
                engine,
                corpus,
                args.vocab,
                os.path.join(args.work_dir, tag),
                os.path.join(args.work_dir, f"{tag}.log"),
                args.dupe_factor,
                args.num_shards,
            )
        except RuntimeError as e:
            print(f"{engine}: failed: {e}", flush=True)
            continue
        row.update(engine=engine, start_s=start)
        rows.append(row)
        print(json.dumps(row), flush=True)

    base = next((r for r in rows if r["engine"] == "direct"), None)
    print(
        "\n| engine | start s | wall s | instances/s | CPU s | peak RSS MB "
        "| peak disk MB | wall vs direct | CPU vs direct | RSS vs direct "
        "| same records | load |"
    )
    print(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- | --- |"
    )
    for r in rows:
        ratio = lambda k: f"{r[k] / base[k]:.2f}x" if base else "-"  # noqa: E731
        same = (
            "yes"
            if base and (r["records"], r["digest"]) == (base["records"], base["digest"])
            else ("-" if not base else "NO")
        )
        start = f"{r['start_s']:.1f}" if r["start_s"] is not None else "-"
        print(
            f"| {r['engine']} | {start} | {r['wall_s']:.1f} "
            f"| {r['instances'] / r['wall_s']:,.0f} | {r['cpu_s']:.1f} "
            f"| {r['peak_rss_mb']:,.0f} | {r['peak_disk_mb']:,.0f} "
            f"| {ratio('wall_s')} | {ratio('cpu_s')} "
            f"| {ratio('peak_rss_mb')} | {same} "
            f"| {r['load_before']:.1f}-{r['load_after']:.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
