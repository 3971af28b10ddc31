"""Score texts with an exported SavedModel (Beam RunInference); evaluate them.

    python -m pipelines.batch_predict --saved_model=out/sst2_serving \\
        --input='reviews/*.tsv' --output_dir=out/scored \\
        [--text_column=sentence] [--label_column=label] \\
        [--long_text=truncate|average] [--compression=gzip] [--overwrite] \\
        [Beam flags: --runner=DataflowRunner --project=... --region=... \\
         --temp_location=gs://... --setup_file=./setup.py]

The chain:

    ReadRows             (file, bytes line)           ReadAllFromText
    ParseRows            ((fields, label), text)      configs.labelled_text
    ScoreTexts           ((fields, label), PredictionResult)
                         RunInference + SavedModelTextHandler
    FormatPredictions    JSON lines -> predictions-SSSSS-of-NNNNN.jsonl[.gz]
    EvaluatePredictions  (with --label_column) confusion matrix -> metrics.json

Input: the rows `pipelines.classification_data` reads (TSV with quoting
off, CSV, JSON Lines; TSV/CSV with a header), and plain text (any other
name: each line is one text), local or remote, globs, `.gz`. The text is
`--text_column` (default `sentence` for TSV/CSV, `text` otherwise).

Output, in `--output_dir`:
  * `predictions-*.jsonl`: one JSON object per scored row, the row's own
    fields first (in file order; a field named like one of ours becomes
    `input_<name>`), then `label` (class id), `label_name`, `label_value`
    and `probabilities` (softmax, 6 decimals), as `model.predict` prints;
  * `dead_letter.jsonl`: one `{"reason", "file", "line"}` per bad row;
  * with `--label_column` (a row's label is matched to the model's label
    values, else to its label names; rows without one are dead letters):
    `metrics.json` (count, accuracy, macro-F1, per-class precision/recall/
    F1, the confusion matrix, the label values the model does not know)
    and `confusion_matrix.png`;
  * `summary.json`, written last: the run's counts. A directory with our
    shards but no `summary.json` is an interrupted run: the next run
    clears what it left (its outputs, Beam's `beam-temp-*`) and says so.

Only the SavedModel, TensorFlow and tensorflow-text are needed: Beam's own
TensorFlow handler loads models through `tf.keras.models.load_model`, which
refuses SavedModels under Keras 3 (and needs `tensorflow_hub`), so
`SavedModelTextHandler` loads with `tf.saved_model.load` and calls the
`serving_default` signature on batches of raw strings.

Nothing is silently lost: rows read = predictions + dead letters + blank
lines, each a Beam counter, all printed at the end. Texts longer than the
model's `max_seq_length` are truncated (and counted), or with
`--long_text=average` scored as overlapping windows whose probabilities
are averaged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import TestOptions

from configs import labelled_text, output_lock
from configs.cli import add_overwrite_flag, program_name
from configs.schema import ConfigError
from pipelines import corpus, options
from pipelines.classification_data import read_header
from pipelines.evaluate_predictions import (
    EVAL_NAMESPACE,
    EvaluatePredictions,
    confusion_matrix_png,
)
from pipelines.prediction_rows import (
    BAD_REASONS,
    DEFAULT_MAX_LINE_BYTES,
    PARSE_NAMESPACE,
    ROWS_BLANK,
    ROWS_READ,
    ParseRows,
)
from pipelines.saved_model_handler import (
    LONG_TEXT_MODES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MIN_BATCH_SIZE,
    SavedModelInfo,
    SavedModelTextHandler,
    read_saved_model_info,
)
from pipelines.score_texts import (
    ROWS_PREDICTED,
    SCORE_NAMESPACE,
    TEXTS_TRUNCATED,
    TEXTS_WINDOWED,
    WINDOWS_SCORED,
    FormatPredictions,
    ScoreTexts,
)

# === Files (in --output_dir) ===
PREDICTIONS_PREFIX = "predictions"
DEAD_LETTER_FILE = "dead_letter.jsonl"
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
SUMMARY_FILE = "summary.json"  # written last: the run is complete
_OUR_FILES = (DEAD_LETTER_FILE, METRICS_FILE, CONFUSION_PNG, SUMMARY_FILE)
# What a killed run leaves besides its outputs: Beam's file sinks write
# under `beam-temp-<name>-<uuid>/` beside their output and rename into place
# at the end; `_write_atomic` writes `<name>.tmp-<pid>`. Every run clears them.
TEMP_PREFIXES = tuple(
    f"beam-temp-{name}-"
    for name in (PREDICTIONS_PREFIX, DEAD_LETTER_FILE, METRICS_FILE)
) + tuple(f"{name}.tmp-" for name in (CONFUSION_PNG, SUMMARY_FILE))

COMPRESSIONS = ("none", "gzip")
NAMESPACES = (PARSE_NAMESPACE, SCORE_NAMESPACE, EVAL_NAMESPACE)


def _write_atomic(path: str, data: bytes) -> None:
    """Writes via a temporary name + rename (never a half-written file)."""
    temp = f"{path}.tmp-{os.getpid()}"
    with FileSystems.create(temp, compression_type="uncompressed") as f:
        f.write(data)
    FileSystems.rename([temp], [path])


# === Flags ===
@dataclasses.dataclass(frozen=True)
class BatchPredictSettings:
    """Everything the job needs besides Beam's options."""

    model: SavedModelInfo
    input: str  # glob or comma-separated globs
    input_files: tuple  # what they matched, sorted
    fmt: str  # "tsv", "csv", "jsonl" or "text" (all files alike)
    columns: tuple  # TSV/CSV header (the same in every file)
    output_dir: str
    text_column: str
    label_column: str  # "" = no evaluation
    long_text: str
    min_batch_size: int
    max_batch_size: int
    max_line_bytes: int
    num_shards: int
    compression: str
    overwrite: bool


def build_parser():
    p = options.Parser(
        prog=program_name("pipelines.batch_predict"),
        description="Score TSV/CSV/JSONL/text rows with a model.export SavedModel.",
    )
    add = p.add_argument
    add("--saved_model", required=True, help="a model.export SavedModel directory")
    add(
        "--input",
        required=True,
        help="rows to score: TSV/CSV/JSONL/plain text, a glob or comma-separated globs",
    )
    add(
        "--output_dir",
        required=True,
        help="directory for predictions-*.jsonl, dead letters, metrics.json, summary.json",
    )
    add(
        "--text_column",
        default="",
        help="field with the text (default: sentence for TSV/CSV, text otherwise)",
    )
    add(
        "--label_column",
        default="",
        help="field with the true label: also write metrics.json (default: none)",
    )
    add(
        "--long_text",
        default="truncate",
        choices=LONG_TEXT_MODES,
        help="texts over max_seq_length: truncate, or average overlapping windows "
        "(default truncate)",
    )
    add(
        "--min_batch_size",
        type=int,
        default=DEFAULT_MIN_BATCH_SIZE,
        help="RunInference batch lower bound (default %(default)s rows)",
    )
    add(
        "--max_batch_size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help="RunInference batch upper bound (default %(default)s rows)",
    )
    add(
        "--max_line_bytes",
        type=int,
        default=DEFAULT_MAX_LINE_BYTES,
        help="longer rows are dead letters (default %(default)s bytes)",
    )
    add(
        "--num_shards",
        type=int,
        default=0,
        help="prediction shards (default 0 = let the runner decide)",
    )
    add(
        "--compression",
        default="none",
        choices=COMPRESSIONS,
        help="of the predictions files (default none)",
    )
    add_overwrite_flag(add, "replace an earlier run's outputs")
    return p


def parse(argv):
    """Returns `(BatchPredictSettings, PipelineOptions)`.

    Raises:
        options.UsageError: one line naming the first problem; nothing ran.
    """
    import sys

    from apache_beam.options.pipeline_options import PipelineOptions

    argv = sys.argv[1:] if argv is None else list(argv)
    args, beam_args = build_parser().parse_known_args(argv)
    unknown = options.unknown_beam_flags(beam_args)
    if unknown:
        raise options.UsageError(f"unknown flag(s): {' '.join(unknown)}")
    if not 1 <= args.min_batch_size <= args.max_batch_size:
        raise options.UsageError("need 1 <= --min_batch_size <= --max_batch_size")
    if args.max_line_bytes < 1:
        raise options.UsageError("--max_line_bytes must be at least 1")
    if args.num_shards < 0:
        raise options.UsageError("--num_shards must be >= 0")

    try:
        files = corpus.expand_patterns(args.input)
    except ValueError as e:
        raise options.UsageError(str(e)) from None
    # With --overwrite the old predictions are deleted before reading: input
    # inside the output location would be read as nothing (or as our own
    # output), so it is refused before anything is touched.
    inside = [f for f in files if _is_under(f, args.output_dir)]
    if inside:
        raise options.UsageError(
            f"--input matches {inside[0]}, inside --output_dir {args.output_dir}; "
            "put the rows to score elsewhere"
        )
    formats = {labelled_text.detect_input_format(f) for f in files}
    if len(formats) > 1:
        raise options.UsageError(
            f"--input mixes formats ({', '.join(sorted(formats))}): score them "
            "in separate runs"
        )
    fmt = formats.pop()
    text_column = args.text_column or ("sentence" if fmt in ("tsv", "csv") else "text")
    if args.label_column and args.label_column == text_column:
        raise options.UsageError("--label_column must differ from --text_column")
    columns = []
    if fmt in ("tsv", "csv"):
        try:
            columns = read_header(files[0], fmt)
            for path in files[1:]:
                if read_header(path, fmt) != columns:
                    raise ConfigError(
                        f"{path}: its header differs from {files[0]}'s "
                        f"({', '.join(columns)})"
                    )
        except ConfigError as e:
            raise options.UsageError(str(e)) from None
        for flag, name in (
            ("--text_column", text_column),
            ("--label_column", args.label_column),
        ):
            if name and name not in columns:
                raise options.UsageError(
                    f"{flag} {name!r} is not in the header of {files[0]} "
                    f"(columns: {', '.join(columns)})"
                )
    elif fmt == labelled_text.TEXT_FORMAT and args.label_column:
        raise options.UsageError(
            "--label_column needs TSV/CSV/JSONL input (plain text has no labels)"
        )

    model = read_saved_model_info(args.saved_model)
    options.check_output_dir(args.output_dir)
    earlier = _our_outputs(args.output_dir)
    # Only a finished run (summary.json, written last) is a result to keep;
    # what an interrupted one left is cleared by `_clear_outputs`.
    finished = FileSystems.exists(FileSystems.join(args.output_dir, SUMMARY_FILE))
    if earlier and finished and not args.overwrite:
        raise options.UsageError(
            f"--output_dir {args.output_dir} holds earlier predictions "
            f"({os.path.basename(earlier[0])}, ...): pass --overwrite to replace them"
        )
    settings = BatchPredictSettings(
        model=model,
        input=args.input,
        input_files=tuple(files),
        fmt=fmt,
        columns=tuple(columns),
        output_dir=args.output_dir,
        text_column=text_column,
        label_column=args.label_column,
        long_text=args.long_text,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        max_line_bytes=args.max_line_bytes,
        num_shards=args.num_shards,
        compression=args.compression,
        overwrite=args.overwrite,
    )
    pipeline_options = PipelineOptions(beam_args)
    options.check_runner(pipeline_options)
    return settings, pipeline_options


def _is_under(path: str, directory: str) -> bool:
    """True when `path` lies inside `directory` (local or remote)."""
    if "://" in path or "://" in directory:
        return path.startswith(directory.rstrip("/") + "/")
    directory = os.path.realpath(directory)
    return os.path.commonpath([os.path.realpath(path), directory]) == directory


def _our_outputs(output_dir: str) -> list[str]:
    """Paths in `output_dir` that an earlier run of this job wrote."""
    if not FileSystems.exists(output_dir):
        return []
    patterns = [FileSystems.join(output_dir, f"{PREDICTIONS_PREFIX}-*")] + [
        FileSystems.join(output_dir, name) for name in _OUR_FILES
    ]
    return sorted(m.path for r in FileSystems.match(patterns) for m in r.metadata_list)


# === The job ===
def build_pipeline(p: beam.Pipeline, settings: BatchPredictSettings) -> None:
    """Adds the job's transforms to `p`."""
    out, model = settings.output_dir, settings.model
    # Raw bytes, so that undecodable lines reach the dead-letter file.
    lines = (
        p
        | "ListInputs" >> beam.Create(list(settings.input_files))
        | "ReadRows"
        >> beam.io.ReadAllFromText(
            coder=beam.coders.BytesCoder(),
            skip_header_lines=1 if settings.fmt in ("tsv", "csv") else 0,
            with_filename=True,
        )
    )
    parsed = lines | "ParseRows" >> ParseRows(
        fmt=settings.fmt,
        columns=list(settings.columns),
        text_column=settings.text_column,
        label_column=settings.label_column,
        max_line_bytes=settings.max_line_bytes,
    )
    handler = SavedModelTextHandler(
        model.path,
        long_text=settings.long_text,
        min_batch_size=settings.min_batch_size,
        max_batch_size=settings.max_batch_size,
    )
    scored = parsed["rows"] | "ScoreTexts" >> ScoreTexts(handler)
    formatted = scored | "FormatPredictions" >> FormatPredictions(
        labels=model.labels,
        label_names=model.label_names,
        evaluate=bool(settings.label_column),
    )
    suffix = ".jsonl.gz" if settings.compression == "gzip" else ".jsonl"
    _ = formatted.lines | "WritePredictions" >> beam.io.WriteToText(
        FileSystems.join(out, PREDICTIONS_PREFIX),
        file_name_suffix=suffix,
        num_shards=settings.num_shards,
    )
    _ = (
        parsed["bad"]
        | "FormatBad" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False))
        | "WriteDeadLetters"
        >> beam.io.WriteToText(
            FileSystems.join(out, DEAD_LETTER_FILE), shard_name_template=""
        )
    )
    if settings.label_column:
        _ = (
            formatted.eval
            | "Evaluate"
            >> EvaluatePredictions(labels=model.labels, label_names=model.label_names)
            | "MetricsJson" >> beam.Map(lambda m: json.dumps(m, indent=2))
            | "WriteMetrics"
            >> beam.io.WriteToText(
                FileSystems.join(out, METRICS_FILE), shard_name_template=""
            )
        )


def _clear_outputs(settings: BatchPredictSettings) -> None:
    """Before every run: removes what killed runs left (Beam's `beam-temp-*`,
    our `*.tmp-*`, the outputs of a run that never wrote `summary.json`) and,
    with --overwrite, a finished run's outputs; nothing else. Says what an
    interrupted run left. `summary.json`, the commit marker, goes first, so
    a run killed while clearing never leaves it over missing shards."""
    out = settings.output_dir
    if not FileSystems.exists(out):
        FileSystems.mkdirs(out)
        return
    summary = FileSystems.join(out, SUMMARY_FILE)
    finished = FileSystems.exists(summary)
    if finished:  # parse() refused it without --overwrite
        FileSystems.delete([summary])
    leftovers = options.clear_leftovers(out, TEMP_PREFIXES)
    stale = _our_outputs(out)
    if stale:
        FileSystems.delete(stale)
    if leftovers or (stale and not finished):
        pieces = [p.rstrip("/").rsplit("/", 1)[-1] for p in leftovers + stale]
        shown = ", ".join(pieces[:3]) + (", ..." if len(pieces) > 3 else "")
        print(
            f"note: removed {len(pieces)} piece(s) that an interrupted run "
            f"left in {out} ({shown})"
        )


def run_pipeline(settings, pipeline_options):
    """Builds and runs the pipeline, waits for it; returns Beam's result."""
    if not pipeline_options.view_as(TestOptions).dry_run:
        _clear_outputs(settings)
    p = beam.Pipeline(options=pipeline_options)
    build_pipeline(p, settings)
    result = p.run()
    result.wait_until_finish()
    return result


def counter_totals(result) -> dict | None:
    """This job's counters (`options.counter_totals` over `NAMESPACES`)."""
    return options.counter_totals(result, NAMESPACES)


def write_summary(settings, result, seconds: float) -> dict:
    """Draws the confusion matrix, writes `summary.json` (last); returns it."""
    out = settings.output_dir
    c = counter_totals(result)
    counts = c or {}

    def get(ns, name):
        return int(counts.get(f"{ns}/{name}", 0))

    bad = {r: get(PARSE_NAMESPACE, r) for r in BAD_REASONS if get(PARSE_NAMESPACE, r)}
    shards = sorted(
        m.path
        for m in FileSystems.match([FileSystems.join(out, f"{PREDICTIONS_PREFIX}-*")])[
            0
        ].metadata_list
    )
    summary = {
        "saved_model": settings.model.path,
        "inputs": list(settings.input_files),
        "rows_read": get(PARSE_NAMESPACE, ROWS_READ),
        "rows_predicted": get(SCORE_NAMESPACE, ROWS_PREDICTED),
        "rows_dead_letter": sum(bad.values()),
        "rows_blank": get(PARSE_NAMESPACE, ROWS_BLANK),
        "dead_letter_reasons": bad,
        "long_text": settings.long_text,
        "max_seq_length": settings.model.max_seq_length,
        "texts_truncated": get(SCORE_NAMESPACE, TEXTS_TRUNCATED),
        "texts_scored_as_windows": get(SCORE_NAMESPACE, TEXTS_WINDOWED),
        "windows_scored": get(SCORE_NAMESPACE, WINDOWS_SCORED),
        "shards": [s.rsplit("/", 1)[-1] for s in shards],
        "seconds": round(seconds, 1),
        "metrics_reported": c is not None,
    }
    if settings.label_column:
        with FileSystems.open(
            FileSystems.join(out, METRICS_FILE), compression_type="uncompressed"
        ) as f:
            metrics = json.loads(f.read().decode("utf-8"))
        _write_atomic(
            FileSystems.join(out, CONFUSION_PNG), confusion_matrix_png(metrics)
        )
        summary["evaluation"] = {
            k: metrics[k]
            for k in ("count", "accuracy", "macro_f1", "rows_with_unknown_label")
        }
    _write_atomic(
        FileSystems.join(out, SUMMARY_FILE),
        json.dumps(summary, indent=2).encode("utf-8"),
    )
    return summary


def summary_lines(summary: dict, output_dir: str) -> str:
    """A few lines a person reads at the end of a run."""
    s = summary
    seconds = max(s["seconds"], 1e-9)
    lines = [
        f"batch_predict: {s['rows_predicted']} predictions in "
        f"{len(s['shards'])} shard(s) in {s['seconds']} s "
        f"({s['rows_predicted'] / seconds:,.1f} rows/s)",
        f"  rows: {s['rows_read']} read = {s['rows_predicted']} predicted + "
        f"{s['rows_dead_letter']} dead letters + {s['rows_blank']} blank",
    ]
    if s["rows_dead_letter"]:
        reasons = ", ".join(f"{k}={v}" for k, v in s["dead_letter_reasons"].items())
        lines.append(
            f"  dead letters: {reasons} -> "
            f"{FileSystems.join(output_dir, DEAD_LETTER_FILE)}"
        )
    if s["long_text"] == "average":
        lines.append(
            f"  long texts: {s['texts_scored_as_windows']} scored as "
            f"{s['windows_scored']} windows of <= {s['max_seq_length']} tokens "
            "(probabilities averaged)"
        )
    else:
        lines.append(
            f"  long texts: {s['texts_truncated']} truncated to "
            f"{s['max_seq_length']} tokens (--long_text=average scores them whole)"
        )
    if "evaluation" in s:
        e = s["evaluation"]
        lines.append(
            f"  evaluation: accuracy {e['accuracy']:.4f}, macro-F1 "
            f"{e['macro_f1']:.4f} on {e['count']} rows; "
            f"{e['rows_with_unknown_label']} with a label the model does not "
            f"know -> {FileSystems.join(output_dir, METRICS_FILE)}"
        )
    if not s["metrics_reported"]:
        lines.append("  (this runner reported no metrics; counts are missing)")
    elif (
        s["rows_read"] != s["rows_predicted"] + s["rows_dead_letter"] + s["rows_blank"]
    ):
        lines.append("  WARNING: the counts do not add up; some rows are unaccounted")
    return "\n".join(lines)


def run(argv=None) -> dict:
    """Runs the job (see `_run`); `--output_dir` is locked while it runs."""
    with output_lock.released_at_end():
        return _run(argv)


def _run(argv=None) -> dict:
    """Runs the job; returns the summary it wrote ({} for a dry run).

    Raises:
        options.UsageError: bad flags, before any work.
        options.JobFailed: no row could be scored (all bad or blank).
    """
    settings, pipeline_options = parse(argv)
    options.lock_output(settings.output_dir, "pipelines.batch_predict")
    started = time.time()
    result = run_pipeline(settings, pipeline_options)
    if pipeline_options.view_as(TestOptions).dry_run:
        return {}  # Dataflow built the job offline; nothing was written
    summary = write_summary(settings, result, time.time() - started)
    print(summary_lines(summary, settings.output_dir))
    if summary["metrics_reported"] and not summary["rows_predicted"]:
        raise options.JobFailed(
            f"{settings.input}: no row could be scored "
            f"({summary['rows_dead_letter']} dead letters, "
            f"{summary['rows_blank']} blank)"
        )
    return summary


def _not_beam_memory_warning(record) -> bool:
    # Beam 2.77 imports `resource` in the same try as torch, so without
    # torch RunInference warns at each model load that it cannot read the
    # memory use. Noise here: the job does not use that number.
    return not record.getMessage().startswith("Resource module is not available")


def main(argv=None):
    logging.getLogger().addFilter(_not_beam_memory_warning)
    options.main(run, argv)


if __name__ == "__main__":
    main()
