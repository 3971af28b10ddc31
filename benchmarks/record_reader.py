"""Pretraining record readers on ONE CPU core: records/s.

    .venv/bin/python benchmarks/record_reader.py [--records=DIR]
        [--batches=200] [--core=0] [--repeats=2] [--gpu_seq_per_s=7000]

The JAX trainer reads its TFRecords without TensorFlow
(`model.data.numpy_pretraining_batches` over `configs.records`); this
measures that reader, its stages and the alternatives that were weighed,
against the TensorFlow trainer's tf.data pipeline in the same run. Every
row is its own process pinned to one core (`taskset -c CORE`), the best of
`--repeats` rounds over all rows; batch 256, seq 128, 20 predictions, on
records written by the product's data job (`python -m
pipelines.pretraining_data` on `../shared/data/corpus-small` with Google's
uncased vocab, uncompressed and `--compression=gzip`; skipped with a
message where that data is absent), shuffle buffer 10,000:

- ours, end to end: `numpy_pretraining_batches` (framing, both CRC32Cs,
  interleave, shuffle, batch, decode; background thread), plain and gzip;
- tf.data: `model.data.pretraining_dataset` (the TF path: interleave,
  shuffle, batch, `tf.io.parse_example`, int32 cast), confined to the same
  core (its thread pools included);
- stages and alternatives: framing with CRC checks by google-crc32c, by the
  numpy fallback (also end to end), without CRC checks, `check_records`'
  frame walk (before training), the numpy Example decoder vs the
  `protobuf` package (upb) vs `tf.io.parse_example` on the same in-memory
  batches, and Grain's `TFRecordIterDataset` (framing only, no CRC) where
  `grain` is importable.

The last column compares with `--gpu_seq_per_s` (about what one H100/H200
does on BERT-Base at seq 128 and 50% MFU): the reader must never be what
the accelerator waits on. The machine is shared: compare within one run.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(REPO, "..", "shared", "data")
CORPUS = os.path.join(SHARED, "corpus-small", "sample.txt")
VOCAB = os.path.join(SHARED, "vocab", "bert-base-uncased-vocab.txt")
SEQ, PRED, BATCH, SHUFFLE = 128, 20, 256, 10000

ROWS = [
    # (worker, label, what it does)
    ("numpy_iter", "ours: numpy_pretraining_batches", "end to end (CRCs, shuffle)"),
    ("numpy_iter_gz", "ours: numpy_pretraining_batches, gzip", "end to end, .gz"),
    (
        "numpy_iter_numpycrc",
        "ours: numpy_pretraining_batches, numpy CRC32C",
        "end to end, no google-crc32c",
    ),
    ("tfdata", "tf.data: pretraining_dataset", "end to end (TF path)"),
    ("frames_crc", "ours: framing + CRC32C checks", "stage"),
    ("frames_crc_numpy", "ours: framing + numpy CRC32C checks", "alternative"),
    ("frames_nocrc", "ours: framing, no CRC checks", "stage"),
    ("walk", "ours: check_records' frame walk", "pre-check"),
    ("decode_numpy", "decode: ours, numpy (chosen)", "stage"),
    ("decode_upb", "decode: protobuf package (upb)", "alternative"),
    ("decode_tf", "decode: tf.io.parse_example", "baseline"),
    ("grain_frames", "Grain TFRecordIterDataset, framing", "alternative"),
]


# === workers (each in its own pinned process) ===
def _files(directory):
    sys.path.insert(0, REPO)
    from model import data

    return data.list_record_files(directory)


def _in_memory_batches(files):
    from configs import records

    recs = [r for f in files for r in records.iter_records(f)]
    return [recs[i : i + BATCH] for i in range(0, len(recs) - BATCH + 1, BATCH)]


def _rate(run, min_seconds=3.0):
    """Records/s of `run()` (returns records done), repeated >= min_seconds."""
    run()  # warm-up
    done, start = 0, time.perf_counter()
    while True:
        done += run()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def worker(name, directory, batches):
    files = _files(directory)
    if name.startswith("numpy_iter"):
        from model import data

        it = data.numpy_pretraining_batches(
            files,
            batch_size=BATCH,
            max_seq_length=SEQ,
            max_predictions_per_seq=PRED,
            seed=0,
            shuffle_buffer=SHUFFLE,
            check_crc="numpy" if name.endswith("numpycrc") else True,
        )
        for _ in range(SHUFFLE // BATCH + 5):  # fill the shuffle buffer
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = batches * BATCH / (time.perf_counter() - start)
        it.close()
        return rate
    if name == "tfdata":
        from model import data

        ds = data.pretraining_dataset(
            files,
            batch_size=BATCH,
            max_seq_length=SEQ,
            max_predictions_per_seq=PRED,
            shuffle_buffer=SHUFFLE,
            seed=0,
        )
        it = iter(ds)
        for _ in range(SHUFFLE // BATCH + 5):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)["input_ids"].numpy()
        return batches * BATCH / (time.perf_counter() - start)
    if name.startswith("frames_"):
        from configs import records

        check = {"frames_crc": True, "frames_crc_numpy": "numpy"}.get(name, False)

        def run():
            return sum(
                len(block)
                for f in files
                for block in records.iter_record_blocks(f, check_crc=check)
            )

        return _rate(run)
    if name == "walk":
        from configs import records

        return _rate(lambda: sum(records.count_records(f) for f in files))
    if name == "grain_frames":
        try:
            from grain._src.python.dataset.sources import tfrecord_dataset
        except ImportError:
            return None

        def run():
            return sum(
                1 for f in files for _ in tfrecord_dataset.TFRecordIterDataset(f)
            )

        return _rate(run)
    in_memory = _in_memory_batches(files)
    if name in ("decode_numpy", "decode_upb"):
        from configs import example_batches

        decode = (
            example_batches.decode_pretraining_batch
            if name == "decode_numpy"
            else example_batches.decode_pretraining_batch_protobuf
        )

        def run():
            for b in in_memory:
                decode(b, SEQ, PRED)
            return len(in_memory) * BATCH

        return _rate(run)
    if name == "decode_tf":
        import tensorflow as tf

        from model import data

        spec = data.pretraining_feature_spec(SEQ, PRED)
        tensors = [tf.constant(b) for b in in_memory]
        parse = tf.function(lambda raw: tf.io.parse_example(raw, spec))

        def run():
            for t in tensors:
                parse(t)["input_ids"].numpy()
            return len(tensors) * BATCH

        return _rate(run)
    raise ValueError(f"unknown worker {name}")


# === driver ===
def make_records(out_dir):
    """Runs the product's data job twice (plain and gzip); returns the dirs."""
    dirs = {}
    for compression in ("none", "gzip"):
        target = os.path.join(out_dir, compression)
        cmd = [
            sys.executable,
            "-m",
            "pipelines.pretraining_data",
            f"--input={CORPUS}",
            f"--vocab={VOCAB}",
            f"--output_dir={target}",
            f"--max_seq_length={SEQ}",
            f"--max_predictions_per_seq={PRED}",
            "--num_shards=4",
            f"--compression={compression}",
        ]
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        dirs[compression] = target
    return dirs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", default="", help="records dir (default: make)")
    parser.add_argument("--records_gz", default="", help="gzip records dir")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--gpu_seq_per_s", type=float, default=7000.0)
    parser.add_argument("--only", default="", help="comma-separated workers")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per row, best counts"
    )
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        rate = worker(args.worker, args.records, args.batches)
        print(json.dumps({"records_per_second": rate}))
        return
    temp = None
    if not args.records:
        if not (os.path.exists(CORPUS) and os.path.exists(VOCAB)):
            print(f"skipped: {CORPUS} or {VOCAB} is absent")
            return
        temp = tempfile.mkdtemp(prefix="record_reader_")
        print("writing records with python -m pipelines.pretraining_data ...")
        dirs = make_records(temp)
        args.records, args.records_gz = dirs["none"], dirs["gzip"]
    pin = ["taskset", "-c", str(args.core)] if shutil.which("taskset") else []
    only = set(filter(None, args.only.split(",")))
    results = {}
    try:
        # Rounds over all rows, best per row: each row gets several
        # moments of a shared machine's changing load.
        for round_ in range(args.repeats):
            print(f"round {round_ + 1} of {args.repeats}:", flush=True)
            for name, label, kind in ROWS:
                if only and name not in only:
                    continue
                directory = args.records_gz if name.endswith("_gz") else args.records
                if not directory or results.get(name, 0) is None:
                    continue
                cmd = pin + [
                    sys.executable,
                    os.path.abspath(__file__),
                    f"--worker={name}",
                    f"--records={directory}",
                    f"--batches={args.batches}",
                ]
                out = subprocess.run(
                    cmd, cwd=REPO, capture_output=True, text=True, env=_env()
                )
                if out.returncode:
                    print(f"{name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                rate = json.loads(out.stdout.strip().splitlines()[-1])[
                    "records_per_second"
                ]
                if rate is None:
                    results[name] = None
                else:
                    results[name] = max(rate, results.get(name) or 0)
                shown = "not importable" if rate is None else f"{rate:,.0f}"
                print(f"  {label}: {shown} records/s", flush=True)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    base = results.get("tfdata")
    print()
    sys.path.insert(0, REPO)
    from benchmarks import host

    print(f"{host.describe()}; one core (taskset -c {args.core}), batch {BATCH}, ")
    print(f"seq {SEQ}, {PRED} predictions, shuffle buffer {SHUFFLE}.")
    print()
    print(
        "| reader | kind | records/s, 1 core | vs tf.data | "
        f"vs {args.gpu_seq_per_s:,.0f} seq/s |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for name, label, kind in ROWS:
        if name not in results:
            continue
        rate = results[name]
        if rate is None:
            print(f"| {label} | {kind} | not installed | | |")
            continue
        ratio = f"{rate / base:.2f}x" if base else ""
        print(
            f"| {label} | {kind} | {rate:,.0f} | {ratio} | "
            f"{rate / args.gpu_seq_per_s:.1f}x |"
        )


def _env():
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, env.get("PYTHONPATH", "")) if p
    )
    return env


if __name__ == "__main__":
    main()
