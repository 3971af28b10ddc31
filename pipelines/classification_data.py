"""Labelled text -> classification TFRecords + `metadata.json` (Beam).

    python -m pipelines.classification_data --input=train.tsv \\
        --vocab=vocab.txt --output_dir=out/sst2_train [--max_seq_length=64]

Input: TSV (`*.tsv`, read with quoting off, as SST-2 needs), CSV (`*.csv`)
or JSON Lines (`*.jsonl`/`*.json`); TSV/CSV start with a header naming the
columns. One row per line (a CSV field holding a newline is a bad row).
Output, in `--output_dir`: `classification-SSSSS-of-NNNNN.tfrecord` shards
of `tf.train.Example`s with google-research/bert's classifier features
(`input_ids`, `input_mask`, `segment_ids`, `label_ids`), `metadata.json`
(`configs.metadata.CLASSIFICATION_KEYS` plus `label_counts` and
`bad_rows`) and `dead_letter.jsonl` (one JSON object per bad row: its line,
the reason). Ids are packed by `configs.tokenization`, the same code the
fine-tuning reader and the exported SavedModel run, so a sentence gets the
same ids here as in serving.

Bad rows do not stop the job one by one: undecodable bytes, a wrong column
count, unparseable JSON, a missing text or label, and a label outside
`--labels` are counted (Beam metrics, namespace `ParseLabelledRows`) and
written to the dead-letter file. But a file without one usable row, or with
more than `--max_bad_fraction` (default 10%) bad rows, fails the job with
one line and no `metadata.json`: such a file is the wrong file, or read
with the wrong settings. Bad flags stop with one line (exit 2) before any
work (`pipelines.options.main`).
Every flag this job does not know goes to Beam's `PipelineOptions`.
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from configs import features, metadata, output_lock, tokenization
from configs.cli import add_overwrite_flag, program_name
from configs.labelled_text import (  # noqa: F401 (re-exported reasons)
    BAD_COLUMNS,
    BAD_JSON,
    BAD_MISSING_LABEL,
    BAD_MISSING_TEXT,
    BAD_REASONS,
    BAD_UNDECODABLE,
    BAD_UNKNOWN_LABEL,
    DEFAULT_MAX_BAD_FRACTION,
    detect_format,
    parse_row,
    sort_labels,
    split_line,
)
from configs.schema import ConfigError
from pipelines import corpus, options
from pipelines.options import unknown_beam_flags

SHARD_PREFIX = features.CLASSIFICATION_SHARD_PREFIX
SHARD_SUFFIX = ".tfrecord"
DEAD_LETTER_FILE = "dead_letter.jsonl"
_SUMMARY_PREFIX = "_summary"  # temporary per-run counts, merged into metadata
# Beam's file sinks write under `beam-temp-<name>-<uuid>` beside their output
# and finalize by renaming; a killed job leaves these behind.
BEAM_TEMP_PREFIXES = tuple(
    f"beam-temp-{name}-" for name in (SHARD_PREFIX, DEAD_LETTER_FILE, _SUMMARY_PREFIX)
)

# === Counters (namespace = the transform's class name) ===
PARSE_NAMESPACE = "ParseLabelledRows"
ROWS_READ = "rows-read"
ROWS_BLANK = "rows-skipped-blank"
TOKENIZE_NAMESPACE = "TokenizeLabelledRows"
EXAMPLES_WRITTEN = "examples-written"
EXAMPLES_TRUNCATED = "examples-truncated"


def read_header(path: str, fmt: str) -> list[str]:
    """Returns the column names in the first line of `path` (TSV/CSV)."""
    with FileSystems.open(path) as f:
        first = f.readline()
    try:
        line = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the header line is not UTF-8") from None
    if not line.strip():
        raise ConfigError(f"{path}: empty file or empty header line")
    return [c.strip() for c in split_line(line, fmt)]


# === DoFns ===
class _ParseRowFn(beam.DoFn):
    """bytes line -> (text_a, text_b, label); bad rows to the `bad` output."""

    def __init__(self, *, fmt, columns, text_column, text_b_column, label_column):
        self._kwargs = dict(
            fmt=fmt,
            columns=list(columns),
            text_column=text_column,
            text_b_column=text_b_column,
            label_column=label_column,
        )
        self._rows_read = Metrics.counter(PARSE_NAMESPACE, ROWS_READ)
        self._blank = Metrics.counter(PARSE_NAMESPACE, ROWS_BLANK)
        self._bad = {r: Metrics.counter(PARSE_NAMESPACE, r) for r in BAD_REASONS}

    def process(self, line):
        self._rows_read.inc()
        status, value = parse_row(line, **self._kwargs)
        if status == "ok":
            yield value
        elif status == "blank":
            self._blank.inc()
        else:
            self._bad[value].inc()
            yield beam.pvalue.TaggedOutput("bad", _dead_letter(value, line))


class _AssignLabelIdFn(beam.DoFn):
    """(text_a, text_b, label) -> (text_a, text_b, label_id); unknown labels bad."""

    def __init__(self):
        self._unknown = Metrics.counter(PARSE_NAMESPACE, BAD_UNKNOWN_LABEL)

    def process(self, row, labels):
        text_a, text_b, label = row
        index = {value: i for i, value in enumerate(labels)}
        if label not in index:
            self._unknown.inc()
            yield beam.pvalue.TaggedOutput(
                "bad",
                {
                    "reason": BAD_UNKNOWN_LABEL,
                    "label": label,
                    "text": text_a,
                    "text_b": text_b,
                },
            )
            return
        yield text_a, text_b, index[label]


class _TokenizeBatchFn(beam.DoFn):
    """list of (text_a, text_b, label_id) -> feature dicts, one per row.

    Tokenizes a whole batch in one tensorflow-text call (the tokenizer is
    built once per worker in `setup()`), then packs with
    `configs.tokenization.pack_classification_inputs`.
    """

    def __init__(self, *, vocab_path, do_lower_case, max_seq_length):
        self._vocab_path = vocab_path
        self._do_lower_case = do_lower_case
        self._max_seq_length = max_seq_length
        self._written = Metrics.counter(TOKENIZE_NAMESPACE, EXAMPLES_WRITTEN)
        self._truncated = Metrics.counter(TOKENIZE_NAMESPACE, EXAMPLES_TRUNCATED)

    def setup(self):
        import tensorflow as tf

        vocab = features.read_vocab(self._vocab_path)
        ids = features.special_token_ids(vocab)
        self._tokenizer = tokenization.build_tokenizer(vocab, self._do_lower_case)
        self._cls_id, self._sep_id = ids[features.CLS], ids[features.SEP]
        self._tf = tf

    def process(self, batch):
        tf = self._tf
        segments = [self._tokenizer.tokenize(tf.constant([r[0] for r in batch]))]
        if batch[0][1] is not None:
            segments.append(
                self._tokenizer.tokenize(tf.constant([r[1] for r in batch]))
            )
        packed = tokenization.pack_classification_inputs(
            segments,
            max_seq_length=self._max_seq_length,
            cls_id=self._cls_id,
            sep_id=self._sep_id,
        )
        packed = {k: v.numpy() for k, v in packed.items()}
        lengths = sum(s.row_lengths().numpy() for s in segments) + 1 + len(segments)
        for i, row in enumerate(batch):
            if lengths[i] > self._max_seq_length:
                self._truncated.inc()
            self._written.inc()
            example = {k: v[i].tolist() for k, v in packed.items()}
            example[features.LABEL_IDS] = [row[2]]
            yield example


def _dead_letter(reason: str, line: bytes) -> dict:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        text = line.decode("utf-8", errors="backslashreplace")
    return {"reason": reason, "line": text}


def _serialize_example(example: dict) -> bytes:
    """dict of int lists -> serialized `tf.train.Example` (all int64)."""
    import tensorflow as tf

    feature = {
        name: tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        for name, values in example.items()
    }
    return tf.train.Example(
        features=tf.train.Features(feature=feature)
    ).SerializeToString()


# === PTransforms ===
class ParseLabelledRows(beam.PTransform):
    """Parses raw lines of a TSV/CSV/JSONL file and assigns label ids.

    Input: `bytes` lines (no header). Output: a dict of PCollections:
    `"rows"`: `(text_a: str, text_b: str | None, label_id: int)`;
    `"bad"`: dead-letter dicts (`reason` plus the line or fields);
    `"labels"`: one `list[str]`, the label values in id order (given, or
    learned from the data and sorted).
    """

    def __init__(
        self,
        *,
        fmt: str,
        columns: list[str],
        text_column: str,
        label_column: str,
        text_b_column: str = "",
        labels: list[str] | None = None,
    ):
        super().__init__()
        if fmt not in ("tsv", "csv", "jsonl"):
            raise ValueError(f"unknown format {fmt!r}")
        if fmt != "jsonl":
            for name in [text_column, label_column] + (
                [text_b_column] if text_b_column else []
            ):
                if name not in columns:
                    raise ConfigError(
                        f"column {name!r} is not in the header "
                        f"(columns: {', '.join(columns)})"
                    )
        self._parse_fn = _ParseRowFn(
            fmt=fmt,
            columns=columns,
            text_column=text_column,
            text_b_column=text_b_column,
            label_column=label_column,
        )
        self._labels = list(labels) if labels else None

    def expand(self, lines):
        # Parse each line; bad ones go to the dead-letter output.
        parsed = lines | "Parse" >> beam.ParDo(self._parse_fn).with_outputs(
            "bad", main="rows"
        )
        # The label set: given, or every label value seen, sorted.
        if self._labels:
            labels = lines.pipeline | "GivenLabels" >> beam.Create([self._labels])
        else:
            labels = (
                parsed.rows
                | "LabelValues" >> beam.Map(lambda row: row[2])
                | "DistinctLabels" >> beam.Distinct()
                | "SortLabels" >> beam.CombineGlobally(beam.combiners.ToListCombineFn())
                | "Order" >> beam.Map(sort_labels)
            )
        # Label value -> id; values outside the set are bad rows.
        labelled = parsed.rows | "AssignLabelIds" >> beam.ParDo(
            _AssignLabelIdFn(), beam.pvalue.AsSingleton(labels)
        ).with_outputs("bad", main="rows")
        bad = (parsed.bad, labelled.bad) | "MergeBad" >> beam.Flatten()
        return {"rows": labelled.rows, "bad": bad, "labels": labels}


class TokenizeLabelledRows(beam.PTransform):
    """Tokenizes and packs labelled rows into classification features.

    Input: `(text_a, text_b | None, label_id)`. Output: dicts with
    `input_ids`, `input_mask`, `segment_ids` (list[int] of
    `max_seq_length`) and `label_ids` (list[int] of 1).
    """

    def __init__(
        self,
        *,
        vocab_path: str,
        max_seq_length: int,
        do_lower_case: bool = True,
        batch_size: int = 256,
    ):
        super().__init__()
        if max_seq_length < 8:
            raise ConfigError("max_seq_length must be at least 8")
        self._fn = _TokenizeBatchFn(
            vocab_path=vocab_path,
            do_lower_case=do_lower_case,
            max_seq_length=max_seq_length,
        )
        self._batch_size = batch_size

    def expand(self, rows):
        # One tensorflow-text call per batch: far fewer op dispatches.
        return (
            rows
            | "Batch"
            >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
            | "Tokenize" >> beam.ParDo(self._fn)
        )


# === Entry point ===


def _parse_flags(argv):
    parser = options.Parser(
        prog=program_name("pipelines.classification_data"),
        description="Labelled TSV/CSV/JSONL -> classification TFRecords.",
    )
    add = parser.add_argument
    add(
        "--input",
        required=True,
        help="labelled TSV/CSV (with a header) or JSONL: file or glob",
    )
    add("--vocab", required=True, help="WordPiece vocab.txt (the model's)")
    add("--output_dir", required=True, help="directory for shards + metadata.json")
    add(
        "--text_column",
        default="sentence",
        help="column/key of the text (default sentence)",
    )
    add(
        "--text_b_column",
        default="",
        help="second text column, for pair tasks (default none)",
    )
    add(
        "--label_column",
        default="label",
        help="column/key of the label (default label)",
    )
    add(
        "--labels",
        default="",
        help="comma-separated label values in id order; default: learned from the file",
    )
    add(
        "--max_seq_length",
        type=int,
        default=128,
        help="tokens incl. [CLS]/[SEP] (default 128)",
    )
    add(
        "--do_lower_case",
        type=options.parse_bool,
        nargs="?",
        const=True,
        default=True,
        help="true for uncased vocabularies (default true)",
    )
    add(
        "--num_shards",
        type=int,
        default=0,
        help="output shards (default 0 = let the runner decide)",
    )
    add(
        "--max_bad_fraction",
        type=float,
        default=DEFAULT_MAX_BAD_FRACTION,
        help="fail when more than this fraction of rows is bad (default "
        f"{DEFAULT_MAX_BAD_FRACTION}); 1 accepts any number",
    )
    add_overwrite_flag(add, "replace a finished output")
    return parser.parse_known_args(argv)


def _check_readable_to_end(path: str) -> None:
    """A compressed input must decompress to its end: Beam's text reader
    stops silently at a cut, losing the rest of the file without a count."""
    import bz2
    import gzip
    import zlib

    from apache_beam.io.filesystem import CompressionTypes

    kind = CompressionTypes.detect_compression_type(path)
    if kind not in (CompressionTypes.GZIP, CompressionTypes.BZIP2):
        return
    opener = gzip.GzipFile if kind == CompressionTypes.GZIP else bz2.BZ2File
    try:
        with FileSystems.open(
            path, compression_type=CompressionTypes.UNCOMPRESSED
        ) as raw, opener(fileobj=raw, mode="rb") as f:
            while f.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error) as e:
        raise options.UsageError(
            f"input {path} cannot be read to its end, truncated or corrupt? ({e})"
        ) from None


def _check_flags(args) -> tuple[str, list[str], list[str]]:
    """Validates flags before any work; returns (format, files, header).

    Raises:
        options.UsageError: one line naming the first problem.
    """
    try:
        files = corpus.expand_patterns(args.input)  # as every job reads --input
    except ValueError as e:
        raise options.UsageError(str(e)) from None
    if args.max_seq_length < 8:
        raise options.UsageError("--max_seq_length must be at least 8")
    if args.num_shards < 0:
        raise options.UsageError("--num_shards must be >= 0")
    if not 0 <= args.max_bad_fraction <= 1:
        raise options.UsageError(
            f"--max_bad_fraction must be in [0, 1], got {args.max_bad_fraction}"
        )
    options.check_filesystem("--vocab", args.vocab)
    if not FileSystems.exists(args.vocab):
        raise options.UsageError(f"--vocab {args.vocab} does not exist")
    try:
        features.special_token_ids(features.read_vocab(args.vocab))
        fmt = detect_format(files[0])
        columns = read_header(files[0], fmt) if fmt != "jsonl" else []
    except UnicodeDecodeError:
        raise options.UsageError(f"--vocab {args.vocab} is not UTF-8 text") from None
    except (ConfigError, ValueError) as e:
        raise options.UsageError(str(e)) from None
    for path in files:
        _check_readable_to_end(path)
    options.check_output_dir(args.output_dir)
    if not args.overwrite and options._non_empty(args.output_dir, BEAM_TEMP_PREFIXES):
        raise options.UsageError(
            f"--output_dir {args.output_dir} is not empty (pass --overwrite)"
        )
    return fmt, files, columns


def _clear_outputs(output_dir: str) -> None:
    """Before every run: clears the temporary files of killed runs (Beam's,
    ours by name); with --overwrite also a previous run's outputs,
    `metadata.json` (the commit marker) first, so a run killed here never
    leaves old metadata over new shards."""
    if not FileSystems.exists(output_dir):
        FileSystems.mkdirs(output_dir)
        return
    options.clear_leftovers(output_dir, BEAM_TEMP_PREFIXES)
    paths = [
        FileSystems.join(output_dir, name)
        for name in (features.METADATA_FILE, DEAD_LETTER_FILE, _SUMMARY_PREFIX)
    ]
    stale = FileSystems.match(
        [FileSystems.join(output_dir, f"{SHARD_PREFIX}*{SHARD_SUFFIX}")]
    )[0].metadata_list
    for path in paths + [m.path for m in stale]:
        if FileSystems.exists(path):
            FileSystems.delete([path])


def build_pipeline(p, args, fmt, columns):
    """Adds the job's transforms to pipeline `p`."""
    out = args.output_dir
    skip = 0 if fmt == "jsonl" else 1
    # Raw bytes, so that undecodable lines reach the dead-letter file.
    lines = p | "ReadRows" >> beam.io.ReadFromText(
        args.input, skip_header_lines=skip, coder=beam.coders.BytesCoder()
    )
    labels = [v.strip() for v in args.labels.split(",") if v.strip()]
    parsed = lines | "ParseRows" >> ParseLabelledRows(
        fmt=fmt,
        columns=columns,
        text_column=args.text_column,
        text_b_column=args.text_b_column,
        label_column=args.label_column,
        labels=labels or None,
    )
    examples = parsed["rows"] | "TokenizeRows" >> TokenizeLabelledRows(
        vocab_path=args.vocab,
        max_seq_length=args.max_seq_length,
        do_lower_case=args.do_lower_case,
    )
    _ = (
        examples
        | "Serialize" >> beam.Map(_serialize_example)
        | "WriteRecords"
        >> beam.io.WriteToTFRecord(
            FileSystems.join(out, SHARD_PREFIX),
            file_name_suffix=SHARD_SUFFIX,
            num_shards=args.num_shards,
        )
    )
    _ = (
        parsed["bad"]
        | "FormatBad" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False))
        | "WriteDeadLetter"
        >> beam.io.WriteToText(
            FileSystems.join(out, DEAD_LETTER_FILE), shard_name_template=""
        )
    )
    # Per-label and per-reason counts, read back into metadata.json.
    label_keys = examples | "LabelKeys" >> beam.Map(
        lambda ex: f"label:{ex[features.LABEL_IDS][0]}"
    )
    bad_keys = parsed["bad"] | "BadKeys" >> beam.Map(lambda d: f"bad:{d['reason']}")
    _ = (
        (label_keys, bad_keys)
        | "MergeKeys" >> beam.Flatten()
        | "CountKeys" >> beam.combiners.Count.PerElement()
        | "ToDict" >> beam.combiners.ToDict()
        | "AddLabels"
        >> beam.Map(
            lambda counts, labels: json.dumps({"counts": counts, "labels": labels}),
            beam.pvalue.AsSingleton(parsed["labels"], default_value=[]),
        )
        | "WriteSummary"
        >> beam.io.WriteToText(
            FileSystems.join(out, _SUMMARY_PREFIX), shard_name_template=""
        )
    )


def run(argv=None, save_main_session=True) -> dict:
    """Runs the job (see `_run`); `--output_dir` is locked while it runs."""
    with output_lock.released_at_end():
        return _run(argv, save_main_session)


def _run(argv=None, save_main_session=True) -> dict:
    """Runs the job; returns the metadata dict it wrote.

    Raises:
        options.UsageError: bad flags or paths (before any work).
        options.JobFailed: no usable row, or more than `--max_bad_fraction`
            of the rows are bad; no `metadata.json` is written then.
    """
    args, beam_args = _parse_flags(argv)
    # Beam only logs unknown flags; a typo must stop the job instead.
    unknown = unknown_beam_flags(beam_args)
    if unknown:
        raise options.UsageError(f"unknown flag(s): {' '.join(unknown)}")
    fmt, files, columns = _check_flags(args)
    options.lock_output(args.output_dir, "pipelines.classification_data")
    pipeline_options = PipelineOptions(beam_args)
    options.check_runner(pipeline_options)  # engine installed, job deadline
    pipeline_options.view_as(
        beam.options.pipeline_options.SetupOptions
    ).save_main_session = save_main_session
    _clear_outputs(args.output_dir)
    with beam.Pipeline(options=pipeline_options) as p:
        build_pipeline(p, args, fmt, columns)

    summary_path = FileSystems.join(args.output_dir, _SUMMARY_PREFIX)
    with FileSystems.open(summary_path) as f:
        summary = json.loads(f.read().decode("utf-8"))
    FileSystems.delete([summary_path])
    counts, labels = summary["counts"], summary["labels"]
    label_counts = {
        value: counts.get(f"label:{i}", 0) for i, value in enumerate(labels)
    }
    bad_rows = {
        k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("bad:")
    }
    num_examples = sum(label_counts.values())
    num_bad = sum(bad_rows.values())
    dead_letter = FileSystems.join(args.output_dir, DEAD_LETTER_FILE)
    _check_bad_rows(args, num_examples, bad_rows, dead_letter)
    shards = FileSystems.match(
        [FileSystems.join(args.output_dir, f"{SHARD_PREFIX}*{SHARD_SUFFIX}")]
    )[0].metadata_list
    meta = {
        "format_version": features.METADATA_FORMAT_VERSION,
        "kind": "classification",
        "num_examples": num_examples,
        "num_shards": len(shards),
        "max_seq_length": args.max_seq_length,
        "do_lower_case": args.do_lower_case,
        "vocab_size": len(features.read_vocab(args.vocab)),
        "vocab_sha256": features.vocab_sha256(args.vocab),
        "labels": labels,
        "label_counts": label_counts,
        "bad_rows": bad_rows,
        "text_column": args.text_column,
        "text_b_column": args.text_b_column,
        "label_column": args.label_column,
        "inputs": files,
        "tool_version": metadata.tool_version(),
    }
    metadata.write_metadata(args.output_dir, meta)  # last: the commit marker
    print(
        f"classification_data: {num_examples} examples in {len(shards)} shard(s), "
        f"labels {label_counts}; {num_bad} bad row(s)"
        + (f" {bad_rows} -> {dead_letter}" if num_bad else "")
    )
    return meta


def _check_bad_rows(args, num_examples, bad_rows, dead_letter) -> None:
    """Fails (no metadata.json) on no usable row or too many bad ones."""
    num_bad = sum(bad_rows.values())
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(bad_rows.items()))
    if num_examples == 0:
        raise options.JobFailed(
            f"{args.input}: no usable rows ({num_bad} bad: {reasons or 'none'}; "
            f"see {dead_letter})" + _label_hint(args, bad_rows)
        )
    fraction = num_bad / (num_bad + num_examples)
    if fraction > args.max_bad_fraction:
        raise options.JobFailed(
            f"{args.input}: {num_bad} of {num_bad + num_examples} rows are bad "
            f"({fraction:.1%} > --max_bad_fraction={args.max_bad_fraction}; "
            f"{reasons}; see {dead_letter})" + _label_hint(args, bad_rows)
        )


def _label_hint(args, bad_rows) -> str:
    if bad_rows.get(BAD_UNKNOWN_LABEL) and args.labels:
        return f"; labels outside --labels={args.labels}: fix --labels or the file"
    return ""


def main(argv=None):
    options.main(run, argv)


if __name__ == "__main__":
    main()
