"""Learns a WordPiece vocabulary from raw corpora.

    python -m pipelines.vocab --input=GLOB --output=FILE --vocab_size=N \
        [--do_lower_case=true] [--reserved_tokens="[PAD] [UNK] [CLS] [SEP] [MASK]"]
        [--num_unused=0] [--min_count=1] [--max_word_length=50]
        [--max_unique_chars=1000] [--text_field=text] [Beam flags ...]

Stages:
  1. Beam (any runner): read documents (`pipelines.corpus.ReadDocuments`),
     split lines into words with the tokenizer's own pre-tokenizer and count
     them (`pipelines.word_counts.CountWords`, a distributed combine), write
     the word -> count table as JSON lines to a temporary directory.
  2. On the launching machine: read the (small) table and learn the
     vocabulary with tensorflow-text's WordPiece learner
     (`pipelines.wordpiece_vocab.learn_vocab`).
  3. Write `FILE` (one token a line: reserved tokens, `[unusedN]`, learned
     tokens) and `FILE.json` (size, sha256, corpus counts, options) through
     Beam's filesystems, so `gs://` works.

The size reached is at most `--vocab_size` and, when the corpus has enough
distinct pieces, within the learner's 5% slack below it (the learner
binary-searches a frequency threshold, so exact sizes are not reachable).
Bad arguments stop with one line `error: ...` (exit status 2) before any
pipeline work; an alphabet that does not fit `--vocab_size` stops the same
way after counting. An empty corpus, or a truncated or corrupt compressed
input, stops with one line and exit status 1. No vocabulary is written then.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
)

from configs import features, metadata, output_lock
from configs.cli import program_name
from pipelines import corpus, options, word_counts, wordpiece_vocab

DEFAULT_RESERVED_TOKENS = " ".join(features.RESERVED_TOKENS)
SIDECAR_SUFFIX = ".json"
COUNTS_FILE_PREFIX = "word_counts"


def _fail(message: str):
    """A bad flag or path: one line, exit 2 (`pipelines.options.main`)."""
    raise options.UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = options.Parser(
        prog=program_name("pipelines.vocab"),
        description="Learn a WordPiece vocabulary from raw corpora with Beam.",
        allow_abbrev=False,  # a misspelt flag must not silently match ours
    )
    parser.add_argument(
        "--input",
        required=True,
        help="corpus files: a glob or comma-separated globs (text, .gz, JSONL)",
    )
    parser.add_argument(
        "--output", required=True, help="vocab.txt path to write (one token a line)"
    )
    parser.add_argument(
        "--vocab_size",
        required=True,
        type=int,
        help="target size incl. reserved tokens (BERT: 30522; 8k-16k for tiny models)",
    )
    parser.add_argument(
        "--do_lower_case",
        type=options.parse_bool,
        nargs="?",
        const=True,
        default=True,
        help="lower-case + strip accents (uncased vocab); default true",
    )
    parser.add_argument(
        "--reserved_tokens",
        default=DEFAULT_RESERVED_TOKENS,
        help="space- or comma-separated; [PAD] first (id 0)",
    )
    parser.add_argument(
        "--num_unused",
        type=int,
        default=0,
        help="[unusedN] placeholder tokens after the reserved ones (default 0)",
    )
    parser.add_argument(
        "--min_count",
        type=int,
        default=1,
        help="words seen fewer times are not counted (default 1)",
    )
    parser.add_argument(
        "--max_word_length",
        type=int,
        default=word_counts.DEFAULT_MAX_WORD_LENGTH,
        help="longer words become [UNK] (default %(default)s characters)",
    )
    parser.add_argument(
        "--max_unique_chars",
        type=int,
        default=wordpiece_vocab.DEFAULT_MAX_UNIQUE_CHARS,
        help="most distinct characters kept as tokens (default %(default)s)",
    )
    parser.add_argument(
        "--text_field", default="text", help="JSONL field with the text (default text)"
    )
    return parser


def _check_output_writable(output: str) -> None:
    """Fails unless `output` can be created (before any pipeline work)."""
    if "://" in output:
        options.check_filesystem("--output", output)
        probe = f"{output}.write-check-{uuid.uuid4().hex}"
        try:
            FileSystems.create(probe).close()
            FileSystems.delete([probe])
        except Exception as e:
            _fail(f"cannot write output {output!r}: {e}")
        return
    directory = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        _fail(f"output {output!r} is a directory; give a file path")
    if not os.path.isdir(directory):
        _fail(f"output directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        _fail(f"output directory {directory!r} is not writable")
    if os.path.exists(output) and not os.access(output, os.W_OK):
        _fail(f"output {output!r} exists and is not writable")


def _parse(argv):
    """Returns (args, reserved tokens, input files, beam args) or exits 2."""
    args, beam_args = _parser().parse_known_args(argv)
    # PipelineOptions only logs unknown flags and drops them, so a typo
    # such as --runer=DataflowRunner would quietly run locally.
    unknown = options.unknown_beam_flags(beam_args)
    if unknown:
        _fail(f"unknown flag(s): {' '.join(unknown)}")
    reserved = [t for t in re.split(r"[\s,]+", args.reserved_tokens) if t]
    try:
        # Checks the reserved tokens: [PAD] first, required ones, no repeats.
        control = wordpiece_vocab.control_tokens(reserved, args.num_unused)
    except wordpiece_vocab.VocabError as e:
        _fail(str(e))
    for name in ("min_count", "max_word_length", "max_unique_chars"):
        if getattr(args, name) < 1:
            _fail(f"--{name} must be >= 1, got {getattr(args, name)}")
    # The alphabet is only known after counting; this is the static bound
    # (a one-character alphabet: c and ##c).
    lower_bound = wordpiece_vocab.min_vocab_size(len(control))
    if args.vocab_size < lower_bound:
        _fail(
            f"--vocab_size={args.vocab_size} is smaller than the "
            f"{len(control)} reserved/unused tokens plus an alphabet "
            f"(at least {lower_bound})"
        )
    try:
        files = corpus.expand_patterns(args.input)
    except ValueError as e:
        _fail(str(e))
    _check_output_writable(args.output)
    return args, reserved, files, beam_args


def _document_lines(doc: tuple[str, list[str]]) -> list[str]:
    return doc[1]


def _format_count(word_count: tuple[str, int]) -> str:
    # JSON, not TSV: a word may hold any character but a line break.
    return json.dumps(list(word_count), ensure_ascii=False)


def _counter_values(result, namespace: str, names) -> dict[str, int]:
    """{counter name: value} for `names` in `namespace`, 0 when never set."""
    values = {name: 0 for name in names}
    query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    for counter in query["counters"]:
        name = counter.key.metric.name
        if name in values:
            value = counter.committed
            if value is None:
                value = counter.attempted
            values[name] += value or 0
    return values


def _read_counts(prefix: str) -> list[tuple[str, int]]:
    """Reads the JSON-lines word -> count shards written by the pipeline."""
    matched = FileSystems.match([prefix + "*"])[0].metadata_list
    pairs = []
    for meta in sorted(matched, key=lambda m: m.path):
        with FileSystems.open(meta.path) as f:
            for line in f.read().decode("utf-8").split("\n"):
                if line:
                    word, count = json.loads(line)
                    pairs.append((word, count))
    return pairs


def _delete_counts(counts_dir: str, prefix: str) -> None:
    """Deletes the count shards (object stores have files, not folders)."""
    try:
        matched = FileSystems.match([prefix + "*"])[0].metadata_list
        if matched:
            FileSystems.delete([m.path for m in matched])
    except Exception:  # nothing written (the pipeline failed early)
        pass
    if "://" not in counts_dir and os.path.isdir(counts_dir):
        shutil.rmtree(counts_dir, ignore_errors=True)


def _write_bytes(path: str, data: bytes) -> None:
    """Writes `data` under a temporary name and renames it to `path`, so a
    killed job never leaves a cut vocabulary under its final name."""
    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with FileSystems.create(temp) as f:
        f.write(data)
    FileSystems.rename([temp], [path])  # replaces an older file


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "tool_version": metadata.tool_version(),
        "learner": "tensorflow_text.tools.wordpiece_vocab."
        f"wordpiece_tokenizer_learner_lib {version('tensorflow-text')}",
        "apache_beam": beam.__version__,
    }


def run(argv=None) -> dict:
    """Runs the job (see `_run`); `--output` is locked while it runs."""
    with output_lock.released_at_end():
        return _run(argv)


def _run(argv=None) -> dict:
    """Runs the job; returns the sidecar dict that was written.

    Raises:
        options.UsageError: bad flags or paths (before any work), or an
            alphabet that does not fit `--vocab_size`.
        options.JobFailed: the corpus has no words.
    """
    args, reserved, files, beam_args = _parse(argv)
    options.lock_output(args.output, "pipelines.vocab")
    # Temporary files a killed run left beside the output (ours by name).
    stale = FileSystems.match([f"{args.output}.tmp-*", f"{args.output}.json.tmp-*"])
    stale = [m.path for r in stale for m in r.metadata_list]
    if stale:
        FileSystems.delete(stale)
    pipeline_options = PipelineOptions(beam_args)
    options.check_runner(pipeline_options)  # engine installed, job deadline
    temp_root = pipeline_options.view_as(GoogleCloudOptions).temp_location
    local_temp = None
    if not temp_root:
        local_temp = temp_root = tempfile.mkdtemp(prefix="vocab-counts-")
    counts_dir = FileSystems.join(temp_root, f"vocab-counts-{uuid.uuid4().hex}")
    counts_prefix = FileSystems.join(counts_dir, COUNTS_FILE_PREFIX)

    try:
        pipeline = beam.Pipeline(options=pipeline_options)
        documents = pipeline | "ReadCorpus" >> corpus.ReadDocuments(
            file_patterns=args.input, text_field=args.text_field
        )
        lines = documents | "ToLines" >> beam.FlatMap(_document_lines)
        word_to_count = lines | "CountWords" >> word_counts.CountWords(
            do_lower_case=args.do_lower_case,
            max_word_length=args.max_word_length,
            min_count=args.min_count,
        )
        _ = (
            word_to_count
            | "FormatCounts" >> beam.Map(_format_count)
            | "WriteCounts"
            >> beam.io.WriteToText(counts_prefix, file_name_suffix=".jsonl")
        )
        started = time.monotonic()
        result = pipeline.run()
        result.wait_until_finish()
        count_seconds = time.monotonic() - started

        read_counters = _counter_values(result, corpus.NAMESPACE, corpus.COUNTER_NAMES)
        count_counters = _counter_values(
            result, word_counts.NAMESPACE, word_counts.COUNTER_NAMES
        )
        table = _read_counts(counts_prefix)
    finally:
        _delete_counts(counts_dir, counts_prefix)
        if local_temp:
            shutil.rmtree(local_temp, ignore_errors=True)

    if not table:
        if count_counters[word_counts.WORDS_COUNTED]:
            _fail(
                f"no word of the corpus occurs at least --min_count="
                f"{args.min_count} times within --max_word_length="
                f"{args.max_word_length}; nothing to learn from"
            )
        raise options.JobFailed(
            f"the corpus {args.input!r} has no words; nothing to learn from "
            f"({read_counters[corpus.DOCUMENTS_READ]} documents, "
            f"{read_counters[corpus.LINES_READ]} lines read, "
            f"{read_counters[corpus.LINES_TOO_LONG]} dropped as too long)"
        )
    started = time.monotonic()
    try:
        learned = wordpiece_vocab.learn_vocab(
            table,
            vocab_size=args.vocab_size,
            reserved_tokens=reserved,
            num_unused=args.num_unused,
            max_word_length=args.max_word_length,
            max_unique_chars=args.max_unique_chars,
        )
    except wordpiece_vocab.VocabError as e:
        _fail(str(e))
    learn_seconds = time.monotonic() - started
    features.special_token_ids(learned.tokens)  # [PAD] ... [MASK] by name

    _write_bytes(args.output, ("\n".join(learned.tokens) + "\n").encode("utf-8"))
    sidecar = {
        "vocab_size": len(learned.tokens),
        "requested_vocab_size": args.vocab_size,
        "learner_vocab_size": learned.learner_size,
        "trimmed_tokens": learned.trimmed,
        "added_alphabet_tokens": learned.added,
        "alphabet_size": len(learned.alphabet),
        "vocab_sha256": features.vocab_sha256(args.output),
        "special_token_ids": features.special_token_ids(learned.tokens),
        "corpus": {
            "documents": read_counters[corpus.DOCUMENTS_READ],
            "lines": read_counters[corpus.LINES_READ],
            "lines_undecodable": read_counters[corpus.LINES_UNDECODABLE],
            "lines_dropped_too_long": read_counters[corpus.LINES_TOO_LONG],
            "records_skipped": read_counters[corpus.RECORDS_UNPARSEABLE]
            + read_counters[corpus.RECORDS_WITHOUT_TEXT],
            "words": count_counters[word_counts.WORDS_COUNTED],
            "words_dropped_too_long": count_counters[word_counts.WORDS_TOO_LONG],
            "words_dropped_below_min_count": count_counters[
                word_counts.WORDS_BELOW_MIN_COUNT
            ],
            "unique_words": len(table),
        },
        "options": {
            "do_lower_case": args.do_lower_case,
            "reserved_tokens": reserved,
            "num_unused": args.num_unused,
            "min_count": args.min_count,
            "max_word_length": args.max_word_length,
            "max_unique_chars": args.max_unique_chars,
            "text_field": args.text_field,
        },
        "inputs": files,
        **_tool_versions(),
    }
    _write_bytes(
        args.output + SIDECAR_SUFFIX,
        (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )
    c = sidecar["corpus"]
    print(
        f"wrote {sidecar['vocab_size']} tokens (requested {args.vocab_size}, "
        f"learner reached {learned.learner_size}) to {args.output}; alphabet "
        f"{len(learned.alphabet)} characters; corpus: {c['lines']} lines, "
        f"{c['words']} words, {c['unique_words']} unique words, "
        f"{c['lines_undecodable']} undecodable lines; counting "
        f"{count_seconds:.1f} s, learning {learn_seconds:.1f} s"
    )
    return sidecar


def main(argv=None):
    options.main(run, argv)


if __name__ == "__main__":
    main()
