"""Flags of `python -m pipelines.pretraining_data`, checked before any work.

Our flags become a typed `PretrainingDataSettings` (the data settings are a
`configs.schema.DataConfig`, validated by it); every other flag goes to
Beam's `PipelineOptions` (`--runner`, `--direct_num_workers`, Dataflow's
`--project`/`--region`/`--temp_location`/`--setup_file`, ...), as in Beam's
wordcount. A flag neither we nor Beam know is an error, not a warning lost
in the log. Every error is one line, `error: ...` on stderr, exit status 2.

The three data jobs (`vocab`, `pretraining_data`, `classification_data`)
report problems one way, through `main`: a bad flag or path is a
`UsageError` (one line, exit 2, raised before any work); a job that ran but
must not be trusted (it produced nothing, or an input was truncated or
corrupt) is a `JobFailed` (one line, exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from configs import features
from configs.cli import (
    add_overwrite_flag,
    flag_help,
    parse_bool,
    program_name,
    quiet_tensorflow_logs,
)
from configs.schema import CHOICES, ConfigError, DataConfig
from pipelines import corpus, holdout, tfrecords

# The jobs raise these as options.UsageError / options.JobFailed.
from pipelines.errors import _FAILED_MARK, JobFailed, UsageError, _failure_line

DEFAULT_NUM_SHARDS = 16


def lock_output(location: str, command: str) -> None:
    """Takes the one-writer lock of `location` (`configs.output_lock`):
    a location another run is writing stops this job with one line, exit 2,
    before any work."""
    from configs import output_lock

    try:
        output_lock.acquire(location, command)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def main(run, argv=None):
    """Runs a data job's `run(argv)`; reports our errors as one line.

    `UsageError` -> `error: ...` on stderr, exit 2. `JobFailed` (raised
    here or inside the pipeline, however the runner wraps it) ->
    `error: ...`, exit 1. Anything else is a bug and keeps its traceback.
    """
    import logging

    quiet_tensorflow_logs()
    # Beam's own INFO chatter stays hidden; our progress lines show.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pipelines").setLevel(logging.INFO)
    try:
        return run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # a runner wraps worker errors in its own types
        line = str(e) if isinstance(e, JobFailed) else _failure_line(e)
        if line is None:
            raise
        print(f"error: {line.replace(_FAILED_MARK, '')}", file=sys.stderr)
        sys.exit(1)


class Parser(argparse.ArgumentParser):
    """argparse that raises `UsageError` (one line) instead of printing
    usage and exiting; `allow_abbrev` is off, so a misspelt flag never
    silently matches one of ours."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message):  # one line, not usage + error
        raise UsageError(message)


@dataclasses.dataclass(frozen=True)
class PretrainingDataSettings:
    """Everything the job needs besides Beam's options."""

    data: DataConfig  # the record settings (written to config.yaml)
    input: str  # glob or comma-separated globs
    input_files: tuple  # what they matched, sorted
    empty_files: tuple  # zero-byte matches (Beam skips them; we report them)
    output_dir: str
    num_shards: int
    compression: str  # "none" or "gzip"
    text_field: str  # JSONL field holding a document
    overwrite: bool
    vocab: tuple  # the vocabulary's tokens (id = index)
    eval_documents: int | float = 0  # held out: 0 none, a count N, or a fraction


def build_parser() -> argparse.ArgumentParser:
    d = DataConfig()
    p = Parser(
        prog=program_name("pipelines.pretraining_data"),
        description="Raw text -> google-research/bert pretraining TFRecords.",
        allow_abbrev=False,  # a typo must not silently match one of our flags
    )
    add = p.add_argument
    add(
        "--input",
        required=True,
        help="corpus: a glob or comma-separated globs of text, .gz or JSONL files "
        "(blank line = document break)",
    )
    add(
        "--vocab", required=True, help="WordPiece vocab.txt (pipelines.vocab or BERT's)"
    )
    add("--output_dir", required=True, help="directory for shards + metadata")
    add(
        "--max_seq_length",
        type=int,
        default=d.max_seq_length,
        help=flag_help(DataConfig, "max_seq_length", set_form=False),
    )
    add(
        "--max_predictions_per_seq",
        type=int,
        default=d.max_predictions_per_seq,
        help=flag_help(DataConfig, "max_predictions_per_seq", set_form=False),
    )
    add(
        "--masked_lm_prob",
        type=float,
        default=d.masked_lm_prob,
        help=flag_help(DataConfig, "masked_lm_prob", set_form=False),
    )
    add(
        "--short_seq_prob",
        type=float,
        default=d.short_seq_prob,
        help=flag_help(DataConfig, "short_seq_prob", set_form=False),
    )
    add(
        "--dupe_factor",
        type=int,
        default=d.dupe_factor,
        help=flag_help(DataConfig, "dupe_factor", set_form=False),
    )
    add(
        "--sentence_task",
        default=d.sentence_task,
        choices=features.SENTENCE_TASKS,
        help=flag_help(DataConfig, "sentence_task", set_form=False),
    )
    add(
        "--whole_word_mask",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        help=flag_help(DataConfig, "whole_word_mask", set_form=False),
    )
    add(
        "--do_lower_case",
        type=parse_bool,
        nargs="?",
        const=True,
        default=True,
        help=flag_help(DataConfig, "do_lower_case", set_form=False),
    )
    add(
        "--random_tokens",
        default=d.random_tokens,
        choices=CHOICES[("DataConfig", "random_tokens")],
        help=flag_help(DataConfig, "random_tokens", set_form=False),
    )
    add(
        "--seed",
        type=int,
        default=d.seed,
        help=flag_help(DataConfig, "seed", set_form=False),
    )
    add(
        "--bucket_size",
        type=int,
        default=d.bucket_size,
        help=flag_help(DataConfig, "bucket_size", set_form=False),
    )
    add(
        "--num_shards",
        type=int,
        default=DEFAULT_NUM_SHARDS,
        help="output TFRecord shards (default %(default)s)",
    )
    add(
        "--compression",
        default="none",
        choices=tfrecords.COMPRESSIONS,
        help="of the shards: none, or gzip (*.tfrecord.gz) (default none)",
    )
    add("--text_field", default="text", help="JSONL field with the text (default text)")
    add(
        "--eval_documents",
        default="0",
        help="hold whole documents out for evaluation: a count (e.g. 100) or a "
        "fraction (e.g. 0.01), chosen by a hash of the text and --seed; their "
        "records go to OUTPUT_DIR/eval/ with a metadata.json of their own "
        "(default 0: none)",
    )
    add_overwrite_flag(add, "replace a finished output directory")
    return p


def unknown_beam_flags(beam_args: list[str]) -> list[str]:
    """The flags in `beam_args` that no Beam `PipelineOptions` class knows.

    Beam itself only logs "Discarding unparseable args" for them; the same
    parser as `PipelineOptions.get_all_options` finds them here.
    """
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        _BeamArgumentParser,
    )

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(c): c for c in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(beam_args)
    return [a for a in unknown if a.startswith("-")] or (unknown[:1] if unknown else [])


def parse(argv: list[str] | None):
    """Returns `(PretrainingDataSettings, PipelineOptions)`.

    Raises:
        UsageError: one line naming the first problem; nothing has run.
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    argv = sys.argv[1:] if argv is None else list(argv)
    args, beam_args = build_parser().parse_known_args(argv)
    unknown = unknown_beam_flags(beam_args)
    if unknown:
        raise UsageError(f"unknown flag(s): {' '.join(unknown)}")

    data = DataConfig(
        max_seq_length=args.max_seq_length,
        max_predictions_per_seq=args.max_predictions_per_seq,
        masked_lm_prob=args.masked_lm_prob,
        short_seq_prob=args.short_seq_prob,
        dupe_factor=args.dupe_factor,
        sentence_task=args.sentence_task,
        whole_word_mask=args.whole_word_mask,
        do_lower_case=args.do_lower_case,
        random_tokens=args.random_tokens,
        seed=args.seed,
        bucket_size=args.bucket_size,
        vocab_file=args.vocab,
    )
    try:
        data.validate()
    except ConfigError as e:
        raise UsageError(str(e)) from None
    wanted = round(args.max_seq_length * args.masked_lm_prob)
    if args.max_predictions_per_seq < wanted:
        raise UsageError(
            f"max_predictions_per_seq {args.max_predictions_per_seq} is too small "
            f"for max_seq_length {args.max_seq_length} x masked_lm_prob "
            f"{args.masked_lm_prob} (needs at least {wanted})"
        )
    if args.num_shards < 1:
        raise UsageError("num_shards must be at least 1")
    if not args.text_field:
        raise UsageError("text_field must not be empty")
    if args.seed < 0:
        raise UsageError("seed must be >= 0")
    try:
        eval_documents = holdout.parse_eval_documents(args.eval_documents)
    except ValueError as e:
        raise UsageError(str(e)) from None

    check_filesystem("vocab", args.vocab)
    if not FileSystems.exists(args.vocab):
        raise UsageError(f"vocab file {args.vocab} does not exist")
    try:
        vocab = features.read_vocab(args.vocab)
        features.special_token_ids(vocab)
    except UnicodeDecodeError:
        raise UsageError(f"vocab file {args.vocab} is not UTF-8 text") from None
    except ValueError as e:
        raise UsageError(f"{args.vocab}: {e}") from None

    try:
        files = corpus.expand_patterns(args.input)
    except ValueError as e:
        raise UsageError(str(e)) from None

    check_output_dir(args.output_dir)
    if not args.overwrite and _non_empty(
        args.output_dir, subdirs=(features.EVAL_SPLIT_DIR,)
    ):
        raise UsageError(
            f"output_dir {args.output_dir} is not empty (pass --overwrite to "
            "replace its pretraining shards and metadata)"
        )
    settings = PretrainingDataSettings(
        data=data,
        input=args.input,
        input_files=tuple(files),
        empty_files=tuple(corpus.empty_files(files)),
        output_dir=args.output_dir,
        num_shards=args.num_shards,
        compression=args.compression,
        text_field=args.text_field,
        overwrite=args.overwrite,
        vocab=tuple(vocab),
        eval_documents=eval_documents,
    )
    pipeline_options = PipelineOptions(beam_args)
    check_runner(pipeline_options)
    return settings, pipeline_options


def check_runner(pipeline_options) -> None:
    """Stops on an unknown `--runner` now rather than after setup work."""
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.runner import create_runner

    runner = pipeline_options.view_as(StandardOptions).runner
    if runner is None or not isinstance(runner, str):
        return
    try:
        create_runner(runner)
    except (ValueError, ImportError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    _check_engine(pipeline_options, runner.rsplit(".", 1)[-1])
    _lift_job_deadline(pipeline_options, runner.rsplit(".", 1)[-1])


# Beam 2.77's portable runners also use --job_server_timeout (default 300 s)
# as the deadline of the running job's state and message streams, so a job
# on Prism, Flink or Spark that runs over 5 minutes dies with
# DEADLINE_EXCEEDED. Unless the user set it, it is raised to this.
LONG_JOB_SERVER_TIMEOUT = 7 * 24 * 3600
_PORTABLE_RUNNERS = ("PrismRunner", "FlinkRunner", "SparkRunner", "PortableRunner")


def _lift_job_deadline(pipeline_options, runner: str) -> None:
    from apache_beam.options.pipeline_options import PortableOptions

    given = pipeline_options.get_all_options(drop_default=True)
    if runner in _PORTABLE_RUNNERS and "job_server_timeout" not in given:
        portable = pipeline_options.view_as(PortableOptions)
        portable.job_server_timeout = LONG_JOB_SERVER_TIMEOUT


# Runner -> the flag naming its local engine, which Beam would otherwise
# download when the job starts (Prism from GitHub, the job server jars from
# Maven Central): a missing engine is one line before any work.
_ENGINE_FLAGS = {
    "PrismRunner": ("PrismRunnerOptions", "prism_location"),
    "FlinkRunner": ("FlinkRunnerOptions", "flink_job_server_jar"),
    "SparkRunner": ("SparkRunnerOptions", "spark_job_server_jar"),
}


def _check_engine(pipeline_options, runner: str) -> None:
    from apache_beam.options import pipeline_options as po

    if (
        runner not in _ENGINE_FLAGS
        or pipeline_options.view_as(po.PortableOptions).job_endpoint
    ):
        return  # not a local engine, or a job service that is already running
    view, attr = _ENGINE_FLAGS[runner]
    path = getattr(pipeline_options.view_as(getattr(po, view)), attr)
    hint = "`make engines` installs it under .engines/ (README: Runners)"
    if not path:
        raise UsageError(f"{runner} needs --{attr}=PATH; {hint}")
    if "://" not in path and not os.path.isfile(path):
        raise UsageError(f"--{attr}={path} does not exist; {hint}")


def is_file(path: str) -> bool:
    """True when `path` exists and is a file, on any Beam filesystem (object
    stores have no directories: an object at exactly `path` is a file)."""
    from apache_beam.io.filesystems import FileSystems

    if "://" not in path:
        return os.path.isfile(path)
    try:
        matched = FileSystems.match([path])[0].metadata_list
    except Exception:  # nothing there
        return False
    return any(m.path.rstrip("/") == path.rstrip("/") for m in matched)


def check_filesystem(flag: str, path: str) -> None:
    """Raises `UsageError` when Beam has no filesystem for `path`'s scheme
    (e.g. TensorFlow's `ram://`, or `hdfs://` without its extra installed)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.get_filesystem(path)
    except Exception as e:
        reason = str(e).splitlines()[0][:200]
        raise UsageError(
            f"{flag} {path}: Beam has no filesystem for this path ({reason})"
        ) from None


def check_output_dir(path: str) -> None:
    """Raises `UsageError` unless `path` can be (or is) an output directory.

    Checked before any work: a file in its place, a file among its local
    parents, or a local parent that is not writable.
    """
    if not path:
        raise UsageError("output_dir must not be empty")
    check_filesystem("output_dir", path)
    if is_file(path):
        raise UsageError(f"output_dir {path} is a file, not a directory")
    if "://" in path:
        return
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"output_dir {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"output_dir {path}: {parent} is not writable")


def _non_empty(directory: str, leftovers=(tfrecords.TEMP_PREFIX,), subdirs=()) -> bool:
    """True when `directory` holds anything but the temporary leftovers of
    interrupted runs (names starting with one of `leftovers`: ours, and
    every run clears them first, see `clear_leftovers`), also inside the
    sub-directories named in `subdirs` (the held-out split's).

    Local directories are listed with `os`: Beam's local match skips
    dot-files and directories."""
    from apache_beam.io.filesystems import FileSystems

    leftovers = tuple(leftovers)
    if "://" not in directory:
        if not os.path.isdir(directory):
            return False
        for name in os.listdir(directory):
            if name.startswith(leftovers):
                continue
            path = os.path.join(directory, name)
            if name in subdirs and os.path.isdir(path):
                if _non_empty(path, leftovers):
                    return True
                continue
            return True
        return False
    if not FileSystems.exists(directory):
        return False
    pattern = FileSystems.join(directory, "*")
    for m in FileSystems.match([pattern])[0].metadata_list:
        name = m.path[len(directory) :].lstrip("/")
        head, _, rest = name.partition("/")
        if head in subdirs and rest:
            name = rest  # an object store lists sub-directories' objects too
        if not name.startswith(leftovers):
            return True
    return False


def clear_leftovers(directory: str, prefixes) -> list:
    """Deletes what killed runs left in `directory` under names starting
    with one of `prefixes` (temporary pieces and shards: ours by name);
    returns the paths that were there.

    Local disks are listed with `os` (Beam's local match skips dot-files and
    directories); object stores list the objects under those prefixes.
    """
    import shutil

    from apache_beam.io.filesystems import FileSystems

    prefixes = tuple(prefixes)
    if "://" not in directory:
        if not os.path.isdir(directory):
            return []
        found = [
            os.path.join(directory, name)
            for name in sorted(os.listdir(directory))
            if name.startswith(prefixes)
        ]
        for path in found:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
        return found
    found = []
    for prefix in prefixes:
        pattern = FileSystems.join(directory, f"{prefix}*/*")
        found += [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if found:
        FileSystems.delete(found)
    return found


def counter_totals(result, namespaces, step_filter=None) -> dict | None:
    """{"Namespace/counter-name": total} of the counters in `namespaces`
    ({} when none was set); None when the runner reports no metrics.

    Committed values where the runner has them, else attempted ones.
    `step_filter(step_name, namespace)`, when given, keeps only the
    counters it returns true for (one branch of a pipeline whose branches
    run the same transforms, e.g. a held-out split's).
    """
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter())["counters"]
    except Exception:  # runners without metrics support
        return None
    totals: dict = {}
    for c in counters:
        ns = c.key.metric.namespace
        if ns in namespaces and (
            step_filter is None or step_filter(c.key.step or "", ns)
        ):
            name = f"{ns}/{c.key.metric.name}"
            value = c.committed if c.committed is not None else c.attempted
            totals[name] = totals.get(name, 0) + (value or 0)
    return totals
