"""Look at pretraining records: `python -m pipelines.inspect DIR`.

Prints a few decoded instances (each masked position as
`{shown=>original}`, so `{[MASK]=>dog}` was masked, `{cat=>dog}` got a
random token, `{dog=>dog}` was kept), the settings and counters from
`metadata.json`, statistics computed from the records, and writes a PNG
histogram of sequence lengths (`DIR/sequence_lengths.png` by default).
Records without `metadata.json` (google-research/bert's) need `--vocab`.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys

import numpy as np

from configs import example_proto, features, fileio, metadata, records
from configs.cli import program_name
from pipelines.errors import UsageError

MAX_RECORDS = 100_000  # statistics read at most this many records


def _parse_args(argv):
    p = argparse.ArgumentParser(prog=program_name("pipelines.inspect"))
    p.add_argument("data_dir", help="directory with pretraining-*.tfrecord*")
    p.add_argument("--vocab", default="", help="vocab.txt (default: metadata's)")
    p.add_argument(
        "--num_instances",
        type=int,
        default=3,
        help="instances printed as tokens (default 3)",
    )
    p.add_argument(
        "--histogram",
        default="",
        help="PNG path for the histogram (default DATA_DIR/sequence_lengths.png)",
    )
    p.add_argument(
        "--max_records",
        type=int,
        default=MAX_RECORDS,
        help="records read for the statistics (default %(default)s)",
    )
    return p.parse_args(argv)


def _shards(data_dir: str) -> list[str]:
    files = fileio.glob(fileio.join(data_dir, "*.tfrecord*"))
    return sorted(f for f in files if not f.endswith(".png"))


def read_instances(files: list[str], limit: int):
    """Yields up to `limit` records as {feature: numpy array}, checking
    every frame's CRCs (no TensorFlow).

    Raises:
        records.RecordError: a shard that is cut short or corrupt; the
            one-line message names it.
    """
    for path in files:
        for record in records.iter_records(path):
            if limit <= 0:
                return
            limit -= 1
            yield {
                name: np.asarray(values, np.float32 if kind == "float32" else np.int64)
                for name, (kind, values) in example_proto.parse_example(record).items()
            }


def decode_instance(record: dict, vocab: list[str]) -> str:
    """One instance as text: segments, masked positions marked."""
    n = int(record[features.INPUT_MASK].sum())
    ids = record[features.INPUT_IDS][:n]
    weights = record[features.MASKED_LM_WEIGHTS]
    m = int((weights > 0).sum())
    originals = dict(
        zip(
            record[features.MASKED_LM_POSITIONS][:m].tolist(),
            record[features.MASKED_LM_IDS][:m].tolist(),
        )
    )

    def word(i):
        return vocab[i] if 0 <= i < len(vocab) else f"<{i}>"

    tokens = []
    for pos, token_id in enumerate(ids.tolist()):
        if pos in originals:
            tokens.append(f"{{{word(token_id)}=>{word(originals[pos])}}}")
        else:
            tokens.append(word(token_id))
    label = int(record[features.NEXT_SENTENCE_LABELS][0])
    return f"label={label} length={n} masked={m}\n  " + " ".join(tokens)


def write_histogram(lengths: list[int], path: str, max_seq_length: int) -> str:
    """Draws the lengths as a PNG at `path` (written whole, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(lengths, bins=min(64, max(8, max_seq_length // 2)), color="#4472c4")
    ax.set_xlabel("tokens per instance (incl. [CLS]/[SEP])")
    ax.set_ylabel("instances")
    ax.set_title(f"sequence lengths ({len(lengths)} instances)")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return fileio.write_atomic(path, png.getvalue())


def histogram_path(args) -> str:
    """Where the histogram goes; checked writable before any record is read.

    Raises:
        UsageError: the path cannot be written (one line).
    """
    path = args.histogram
    if not path:
        local = "://" not in args.data_dir
        path = os.path.join(args.data_dir if local else ".", "sequence_lengths.png")
    reason = fileio.why_not_writable(path)
    if reason:
        raise UsageError(
            f"--histogram {path}: {reason}; give --histogram=PATH elsewhere"
        )
    return path


def run(argv=None) -> dict:
    """Prints the report; returns the computed statistics."""
    args = _parse_args(argv)
    meta = metadata.read_metadata(args.data_dir)
    files = _shards(args.data_dir)
    if not files:
        raise SystemExit(f"error: no *.tfrecord* files in {args.data_dir}")
    vocab_path = args.vocab or (meta or {}).get("vocab_file", "")
    if not vocab_path:
        raise SystemExit("error: no metadata.json with vocab_file here: pass --vocab")
    vocab = features.read_vocab(vocab_path)
    path = histogram_path(args)  # before reading: no work lost on a bad path

    if meta is None:
        print(f"{args.data_dir}: no metadata.json; lengths come from the records")
    else:
        keys = [k for k in metadata.PRETRAINING_KEYS if k != "inputs"]
        print("metadata: " + ", ".join(f"{k}={meta.get(k)}" for k in keys))
        for name, value in (meta.get("counters") or {}).items():
            print(f"  {name}: {value}")
        if meta.get("split") == "eval":
            print(
                f"held-out split: {meta.get('held_out_documents')} document(s) "
                f"(--eval_documents={meta.get('eval_documents')}), kept out of "
                "the training records beside it"
            )
    held_out = metadata.held_out_split(args.data_dir)
    if held_out:
        # Its own split: not read here, never counted with these shards.
        eval_meta = metadata.read_metadata(held_out) or {}
        print(
            f"held-out split: {held_out}: {eval_meta.get('num_examples')} "
            f"records from {eval_meta.get('held_out_documents')} document(s), "
            f"not counted here (inspect it: pipelines.inspect {held_out})"
        )

    lengths, masked, labels = [], [], collections.Counter()
    shown = 0
    for record in read_instances(files, args.max_records):
        if shown < args.num_instances:
            print(f"\ninstance {shown}: " + decode_instance(record, vocab))
            shown += 1
        lengths.append(int(record[features.INPUT_MASK].sum()))
        masked.append(int((record[features.MASKED_LM_WEIGHTS] > 0).sum()))
        labels[int(record[features.NEXT_SENTENCE_LABELS][0])] += 1
    n = len(lengths)
    max_seq_length = (meta or {}).get("max_seq_length") or max(lengths)
    stats = {
        "records_read": n,
        "mean_length": sum(lengths) / max(n, 1),
        "full_length_fraction": sum(x == max_seq_length for x in lengths) / max(n, 1),
        "mean_masked": sum(masked) / max(n, 1),
        "label_fraction_1": labels[1] / max(n, 1),
    }
    print(
        f"\n{n} records read from {len(files)} file(s): mean length "
        f"{stats['mean_length']:.1f} of {max_seq_length} "
        f"({100 * stats['full_length_fraction']:.1f}% full), mean masked "
        f"{stats['mean_masked']:.2f}, label 1 {100 * stats['label_fraction_1']:.1f}%"
    )
    stats["held_out_split"] = held_out
    try:
        stats["histogram"] = write_histogram(lengths, path, max_seq_length)
    except OSError as e:  # checked writable at the start: a full disk, most likely
        raise SystemExit(f"error: cannot write {path}: {e.strerror or e}") from None
    print(f"histogram: {stats['histogram']}")
    return stats


def main(argv=None):
    try:
        run(argv)
    except BrokenPipeError:  # `| head`
        sys.exit(0)
    except UsageError as e:  # a path that cannot be written, before any work
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except records.RecordError as e:  # a cut or corrupt shard: name it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
