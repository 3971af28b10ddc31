"""Pretraining data for the GPU run, packed small enough to carry there.

    .venv/bin/python benchmarks/gpu_pretrain_data.py \
        [--dupe_factor=5 --output=benchmarks/.gpu_data/pretrain.npz]

Runs here (TensorFlow needed), not on the GPU machine. Two steps:

1. Our real data job, `pipelines.pretraining_data` (DirectRunner), on
   `../shared/data/corpus/*.txt.gz` with Google's uncased vocabulary:
   sequence 128, 20 predictions, NSP, `--dupe_factor` rounds (each round
   draws fresh pairs, truncations and random next sentences).
2. The records -> one `.npz` for `benchmarks/gpu_pretrain.py`, which masks
   afresh on the GPU every time it draws a sequence (dynamic masking), so
   the stored masks are undone here: `input_ids` with `masked_lm_ids` put
   back at `masked_lm_positions` are the original tokens.

The `.npz` (numpy only to read; `np.load`, no pickle) holds, for N
sequences:

- `tokens_xz`: uint8, an xz (LZMA2) stream of the real tokens of every
  sequence, concatenated, as little-endian uint16 ids (`[CLS] A [SEP] B
  [SEP]`, no padding). xz with a dictionary larger than the stream finds
  the text repeated by the duplication rounds: it is far smaller than
  deflate (`np.savez_compressed`), and decompresses in seconds.
- `lengths`: uint8 `[N]`, real tokens per sequence (<= 128).
- `segment_a_lengths`: uint8 `[N]`, tokens of `[CLS] A [SEP]`; the
  segment id of position i is `i >= segment_a_lengths`.
- `next_sentence_labels`: uint8 `[N]`, 0 = B follows A, 1 = random B.
- `vocab`: uint8, the bytes of the vocabulary file (the model_dir gets a
  byte-identical `vocab.txt`, whose sha256 the metadata records).
- `metadata_json`: str, the data job's `metadata.json`.

Prints the counts and the file size; stops if the file exceeds `--max_mb`
(what the device call can carry beside the wheels).
"""

import argparse
import json
import lzma
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, REPO)

MAX_SEQ_LENGTH = 128
MAX_PREDICTIONS = 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default=f"{SHARED}/corpus/*.txt.gz")
    p.add_argument("--vocab", default=f"{SHARED}/vocab/bert-base-uncased-vocab.txt")
    p.add_argument("--dupe_factor", type=int, default=5)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument(
        "--output", default=os.path.join(REPO, "benchmarks/.gpu_data/pretrain.npz")
    )
    p.add_argument(
        "--records_dir",
        default="",
        help="where the data job writes (default: a temp dir, removed after)",
    )
    p.add_argument(
        "--skip_job", action="store_true", help="reuse --records_dir as it is"
    )
    p.add_argument("--max_mb", type=float, default=45.0)
    return p.parse_args(argv)


def run_data_job(args, records_dir):
    from pipelines import pretraining_data

    pretraining_data.run(
        [
            f"--input={args.corpus}",
            f"--vocab={args.vocab}",
            f"--output_dir={records_dir}",
            f"--max_seq_length={MAX_SEQ_LENGTH}",
            f"--max_predictions_per_seq={MAX_PREDICTIONS}",
            "--sentence_task=nsp",
            f"--dupe_factor={args.dupe_factor}",
            f"--seed={args.seed}",
            "--num_shards=4",
            "--overwrite",
        ]
    )


def read_original_sequences(records_dir):
    """Reads the records and undoes their masks.

    Returns `(ids, lengths, segment_a_lengths, nsp_labels)`: int `[N, 128]`
    original token ids (0-padded) and int `[N]` arrays.
    """
    import tensorflow as tf

    from model.data import list_record_files, pretraining_feature_spec

    spec = pretraining_feature_spec(MAX_SEQ_LENGTH, MAX_PREDICTIONS)
    dataset = (
        tf.data.TFRecordDataset(list_record_files(records_dir))
        .batch(4096)
        .map(lambda raw: tf.io.parse_example(raw, spec))
    )
    parts = {k: [] for k in ("ids", "lengths", "a_lengths", "nsp")}
    for batch in dataset.as_numpy_iterator():
        ids = batch["input_ids"].copy()
        rows, slots = np.nonzero(batch["masked_lm_weights"] > 0)
        ids[rows, batch["masked_lm_positions"][rows, slots]] = batch["masked_lm_ids"][
            rows, slots
        ]
        lengths = batch["input_mask"].sum(1)
        segments = batch["segment_ids"]
        a_lengths = (segments == 0).sum(1) - (MAX_SEQ_LENGTH - lengths)
        # The format stores segments as one boundary: check that holds.
        position = np.arange(MAX_SEQ_LENGTH)[None]
        expected = (position >= a_lengths[:, None]) & (position < lengths[:, None])
        if not np.array_equal(segments.astype(bool), expected):
            raise ValueError("segment_ids are not [0]*len(A) + [1]*len(B) + padding")
        parts["ids"].append(ids)
        parts["lengths"].append(lengths)
        parts["a_lengths"].append(a_lengths)
        parts["nsp"].append(batch["next_sentence_labels"][:, 0])
    return tuple(
        np.concatenate(parts[k]) for k in ("ids", "lengths", "a_lengths", "nsp")
    )


def pack(ids, lengths, a_lengths, nsp, vocab_bytes, metadata, output):
    """Writes the `.npz` described in the module docstring; returns its path."""
    real = np.arange(ids.shape[1])[None] < lengths[:, None]
    flat = ids[real].astype("<u2")  # row-major: sequence after sequence
    # A dictionary that covers the whole stream lets xz match each
    # duplication round's text against the earlier rounds'.
    dict_size = min(1 << 30, max(1 << 24, 1 << int(flat.nbytes - 1).bit_length()))
    filters = [
        {
            "id": lzma.FILTER_LZMA2,
            "preset": 9 | lzma.PRESET_EXTREME,
            "dict_size": dict_size,
        }
    ]
    start = time.time()
    compressed = lzma.compress(flat.tobytes(), format=lzma.FORMAT_XZ, filters=filters)
    print(
        f"xz: {flat.nbytes / 1e6:.1f} MB of tokens -> {len(compressed) / 1e6:.1f} MB "
        f"in {time.time() - start:.0f} s",
        flush=True,
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    np.savez(
        output,
        tokens_xz=np.frombuffer(compressed, np.uint8),
        lengths=lengths.astype(np.uint8),
        segment_a_lengths=a_lengths.astype(np.uint8),
        next_sentence_labels=nsp.astype(np.uint8),
        vocab=np.frombuffer(vocab_bytes, np.uint8),
        metadata_json=np.array(json.dumps(metadata, sort_keys=True)),
    )
    return output


def main(argv=None):
    args = parse_args(argv)
    records_dir = args.records_dir or tempfile.mkdtemp(prefix="gpu_pretrain_records_")
    start = time.time()
    if not args.skip_job:
        run_data_job(args, records_dir)
    job_seconds = time.time() - start
    with open(os.path.join(records_dir, "metadata.json")) as f:
        metadata = json.load(f)
    ids, lengths, a_lengths, nsp = read_original_sequences(records_dir)
    with open(args.vocab, "rb") as f:
        vocab_bytes = f.read()
    from configs import features

    if metadata.get("vocab_sha256") != features.vocab_sha256(args.vocab):
        raise SystemExit(f"error: records were not made with {args.vocab}")
    path = pack(ids, lengths, a_lengths, nsp, vocab_bytes, metadata, args.output)
    size_mb = os.path.getsize(path) / 2**20
    print(
        f"{path}: {len(ids)} sequences (dupe_factor {metadata['dupe_factor']}), "
        f"{int(lengths.sum())} tokens, mean length {lengths.mean():.1f}, "
        f"NSP random-next {nsp.mean():.3f}; {size_mb:.1f} MiB; data job "
        f"{job_seconds:.0f} s",
        flush=True,
    )
    if not args.records_dir:
        import shutil

        shutil.rmtree(records_dir, ignore_errors=True)
    if size_mb > args.max_mb:
        raise SystemExit(
            f"error: {path} is {size_mb:.1f} MiB > --max_mb={args.max_mb}: "
            "use a smaller --dupe_factor"
        )


if __name__ == "__main__":
    main()
