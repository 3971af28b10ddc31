"""Raw corpora -> google-research/bert pretraining TFRecords + metadata.json.

    python -m pipelines.pretraining_data --input='corpus/*.txt.gz' \\
        --vocab=vocab.txt --output_dir=out/pretraining [--max_seq_length=128 \\
        --dupe_factor=10 --sentence_task=nsp|sop --whole_word_mask ...] \\
        [Beam flags: --runner=DataflowRunner --project=... --region=... \\
         --temp_location=gs://... --setup_file=./setup.py]

The chain (each stage a PTransform of its own module):

    ReadDocuments        (doc_id, lines)            pipelines/corpus.py
    TokenizeDocuments    (fingerprint, ids, ends)   pipelines/tokenize.py
   [HoldOutDocuments     training | held-out docs   pipelines/holdout.py]
    CreateSentencePairs  InstanceBatch (per bucket) pipelines/sentence_pairs.py
                         (buckets through spill files: pipelines/buckets.py)
    MaskTokens           MaskedBatch (per bucket)   pipelines/masking.py
    WriteTfRecords       pretraining-SSSSS-of-NNNNN.tfrecord[.gz]

Every random choice derives from (--seed, document fingerprint, round) (the
masks: from the fingerprints of the document's hash bucket), so the same
input and seed give the same multiset of records on any runner and any
number of workers. Flags are checked before any work (one `error:` line,
exit 2); bad data is counted, never fatal, but a job that writes no
instance, or meets a truncated or corrupt compressed input, fails with one
line (exit 1) and commits nothing. Shards are renamed into place whole and
`metadata.json`, written last, marks a finished run; every run first clears
the temporary pieces an interrupted run left behind. The totals of every counter go
into `metadata.json` and a summary printed at the end.

With `--eval_documents=N` (or a fraction) whole documents are held out
after tokenizing and make their own records, through the same three last
stages, in `OUTPUT_DIR/eval/` (same schema, shard names and static masks,
a `metadata.json` of their own with `split: eval`); the training
`metadata.json` says how many were held out and commits both.
"""

from __future__ import annotations

import logging
import os
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import TestOptions

from configs import features, loader, metadata, output_lock
from configs.schema import ExperimentConfig
from pipelines import (
    corpus,
    holdout,
    masking,
    options,
    sentence_pairs,
    tfrecords,
    tokenize,
)

NAMESPACES = (
    corpus.NAMESPACE,
    tokenize.NAMESPACE,
    holdout.NAMESPACE,
    sentence_pairs.NAMESPACE,
    masking.NAMESPACE,
    tfrecords.NAMESPACE,
)


def build_pipeline(p: beam.Pipeline, settings: options.PretrainingDataSettings):
    """Adds the job's transforms to `p`; returns the written-files PCollection
    (of the training split when documents are held out)."""
    data = settings.data

    def read():
        return corpus.ReadDocuments(
            file_patterns=settings.input, text_field=settings.text_field
        )

    documents = p | "ReadCorpus" >> read()
    if settings.eval_documents:
        # Whole documents go to OUTPUT_DIR/eval/ and make their records
        # there, pairs and "random next" segments from held-out documents
        # only: no held-out sentence reaches a training record.
        split = documents | HOLD_OUT_STEP >> holdout.HoldOutDocuments(
            eval_documents=settings.eval_documents, seed=data.seed, reread=read()
        )
        documents = split[holdout.TRAIN]
        _ = split[holdout.EVAL] | EVAL_STEP >> beam.ptransform_fn(make_records)(
            settings, eval_dir(settings.output_dir)
        )
    return make_records(documents, settings, settings.output_dir)


# Labels of the hold-out step and of the held-out split's records chain:
# counters are told apart by these step prefixes (`counter_totals`).
HOLD_OUT_STEP = "HoldOutDocuments"
EVAL_STEP = "HeldOut"


def make_records(docs, settings: options.PretrainingDataSettings, output_dir: str):
    """Documents -> tokens -> pairs -> masks -> shards in `output_dir`;
    returns the written-files PCollection."""
    data = settings.data
    tokenized = docs | "Tokenize" >> tokenize.TokenizeDocuments(
        vocab_path=data.vocab_file, do_lower_case=data.do_lower_case
    )
    special_ids = features.special_token_ids(list(settings.vocab))
    # One temporary directory for the split: the documents spilled for
    # bucketing, then the record pieces; deleted after the last shard.
    temp_dir = tfrecords.new_temp_dir(output_dir)
    instances = tokenized | "CreatePairs" >> sentence_pairs.CreateSentencePairs(
        special_ids=special_ids,
        max_seq_length=data.max_seq_length,
        short_seq_prob=data.short_seq_prob,
        sentence_task=data.sentence_task,
        dupe_factor=data.dupe_factor,
        bucket_size=data.bucket_size,
        seed=data.seed,
        temp_dir=temp_dir,
    )
    masked = instances | "Mask" >> masking.MaskTokens(
        vocab_path=data.vocab_file,
        max_seq_length=data.max_seq_length,
        masked_lm_prob=data.masked_lm_prob,
        max_predictions_per_seq=data.max_predictions_per_seq,
        whole_word_mask=data.whole_word_mask,
        random_tokens=data.random_tokens,
        mask_token_prob=data.mask_token_prob,
        random_token_prob=data.random_token_prob,
    )
    return masked | "Write" >> tfrecords.WriteTfRecords(
        output_dir=output_dir,
        max_seq_length=data.max_seq_length,
        max_predictions_per_seq=data.max_predictions_per_seq,
        vocab_size=len(settings.vocab),
        num_shards=settings.num_shards,
        compression=settings.compression,
        temp_dir=temp_dir,
    )


def eval_dir(output_dir: str) -> str:
    """Where the held-out split goes: `OUTPUT_DIR/eval`."""
    return FileSystems.join(output_dir, features.EVAL_SPLIT_DIR)


def run_pipeline(settings, pipeline_options) -> beam.runners.runner.PipelineResult:
    """Builds and runs the pipeline, waits for it; returns Beam's result."""
    _clear_outputs(settings)
    p = beam.Pipeline(options=pipeline_options)
    build_pipeline(p, settings)
    result = p.run()
    result.wait_until_finish()
    return result


def counter_totals(result, split: str = "train") -> dict | None:
    """This job's counters (`options.counter_totals` over `NAMESPACES`) of
    one split: "train" (the corpus read, and the training documents'
    stages) or "eval" (the held-out documents' stages, and the hold-out
    counts). The hold-out's own second read of the corpus counts nowhere."""

    def under(step: str, prefix: str) -> bool:
        return step == prefix or step.startswith(prefix + "/")

    def keep(step: str, namespace: str) -> bool:
        if namespace == corpus.NAMESPACE and under(step, HOLD_OUT_STEP):
            return False  # the corpus read again for the hashes
        if split == "eval":
            return under(step, EVAL_STEP) or namespace == holdout.NAMESPACE
        return not under(step, EVAL_STEP)

    return options.counter_totals(result, NAMESPACES, keep)


def _shards(settings, directory: str | None = None) -> list[str]:
    pattern = FileSystems.join(
        directory or settings.output_dir,
        f"{tfrecords.SHARD_PREFIX}-*{tfrecords.shard_suffix(settings.compression)}",
    )
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def count_records(paths: list[str], compression: str) -> int:
    """Counts records by reading the shards (when metrics are unavailable).

    Raises:
        options.JobFailed: a shard is cut short or corrupt (names it).
    """
    try:
        return sum(tfrecords.count_records(p, compression) for p in paths)
    except tfrecords.CutRecordError as e:
        raise options.JobFailed(str(e)) from None


def _clear_outputs(settings) -> None:
    """Before every run: clears the temporary pieces of interrupted runs
    (ours by name); with --overwrite also our previous shards and metadata,
    nothing else, in OUTPUT_DIR and in its held-out split OUTPUT_DIR/eval
    (cleared even when this run holds nothing out: an old held-out split
    must not sit beside new training records). `metadata.json`, the commit
    marker, goes first, so a run killed while clearing never leaves old
    metadata over missing shards."""
    held_out = eval_dir(settings.output_dir)
    if not FileSystems.exists(settings.output_dir):
        FileSystems.mkdirs(settings.output_dir)
    paths, metadata_files = [], []
    for directory in (settings.output_dir, held_out):
        if not FileSystems.exists(directory):
            continue
        leftovers = options.clear_leftovers(directory, [tfrecords.TEMP_PREFIX])
        if leftovers:
            logging.getLogger(__name__).info(
                "removed %d temporary piece(s) of an interrupted run", len(leftovers)
            )
        for name in (features.METADATA_FILE, loader.RESOLVED_CONFIG_FILE):
            path = FileSystems.join(directory, name)
            if FileSystems.exists(path):
                (metadata_files if name == features.METADATA_FILE else paths).append(
                    path
                )
        stale = FileSystems.match(
            [FileSystems.join(directory, f"{tfrecords.SHARD_PREFIX}-*")]
        )[0].metadata_list
        paths += [m.path for m in stale]
    for path in metadata_files + paths:  # in order: the commit markers first
        FileSystems.delete([path])
    if settings.eval_documents:
        if not FileSystems.exists(held_out):
            FileSystems.mkdirs(held_out)
    elif "://" not in held_out and os.path.isdir(held_out):
        try:
            os.rmdir(held_out)  # only when nothing of the user's is left there
        except OSError:
            pass


def why_nothing(counters: dict | None, empty_files=()) -> str:
    """One line from the counters saying where the input went."""
    c = counters or {}
    parts = []
    for (ns, name), words in (
        ((corpus.NAMESPACE, corpus.DOCUMENTS_READ), "document(s) read"),
        ((corpus.NAMESPACE, corpus.LINES_READ), "line(s) read"),
        ((corpus.NAMESPACE, corpus.LINES_TOO_LONG), "line(s) dropped as too long"),
        ((corpus.NAMESPACE, corpus.RECORDS_UNPARSEABLE), "JSONL record(s) unparseable"),
        ((corpus.NAMESPACE, corpus.RECORDS_WITHOUT_TEXT), "record(s) without text"),
        ((tokenize.NAMESPACE, tokenize.DOCUMENTS_EMPTY), "document(s) empty"),
        ((tokenize.NAMESPACE, tokenize.DOCUMENTS_TOKENIZED), "tokenized"),
        (
            (sentence_pairs.NAMESPACE, sentence_pairs.DOCUMENTS_ONE_SENTENCE),
            "with one sentence",
        ),
        ((sentence_pairs.NAMESPACE, sentence_pairs.PAIRS), "pair(s) made"),
    ):
        value = c.get(f"{ns}/{name}", 0)
        if value or name in (corpus.DOCUMENTS_READ, sentence_pairs.PAIRS):
            parts.append(f"{value} {words}")
    if empty_files:
        parts.insert(0, f"{len(empty_files)} empty input file(s)")
    if counters is None:
        return "the runner reported no counters"
    return ", ".join(parts)


def write_metadata(settings, result, seconds: float) -> dict:
    """Writes `config.yaml`, then `metadata.json` (the commit marker) from
    the run's counters; returns the training split's metadata.

    With held-out documents, `OUTPUT_DIR/eval/` gets its own `config.yaml`
    and `metadata.json` first, and the training `metadata.json`, written
    last, commits both: a run killed in between leaves OUTPUT_DIR without
    metadata, which every consumer refuses.

    Raises:
        options.JobFailed: the job wrote no instance, or held documents out
            that made no instance (the empty shards are removed and no
            metadata is written, so nothing can train on it).
    """
    totals = counter_totals(result)
    meta = _split_metadata(settings, settings.output_dir, totals, seconds)
    held_out = None
    if settings.eval_documents:
        eval_totals = counter_totals(result, "eval")
        held_out = _split_metadata(
            settings, eval_dir(settings.output_dir), eval_totals, seconds
        )
        documents = held_out_documents(eval_totals)
        held_out.update(split="eval", held_out_documents=documents)
        meta.update(
            held_out_documents=documents,
            eval_dir=features.EVAL_SPLIT_DIR,
            eval_num_examples=held_out["num_examples"],
        )
        loader.dump_config(ExperimentConfig(data=settings.data), held_out["path"])
        metadata.write_metadata(held_out.pop("path"), held_out)
        meta["eval"] = held_out  # for the summary; not written
    path = meta.pop("path")
    loader.dump_config(ExperimentConfig(data=settings.data), path)
    # Last: the commit marker of the whole output directory.
    metadata.write_metadata(path, {k: v for k, v in meta.items() if k != "eval"})
    return meta


def held_out_documents(eval_totals: dict | None) -> int | None:
    """Distinct texts held out (copies of one text count once, as they are
    paired once); None when the runner reported no metrics."""
    if eval_totals is None:
        return None
    held = eval_totals.get(f"{holdout.NAMESPACE}/{holdout.DOCUMENTS_HELD_OUT}", 0)
    copies = eval_totals.get(
        f"{sentence_pairs.NAMESPACE}/{sentence_pairs.DOCUMENTS_DUPLICATE}", 0
    )
    return held - copies


def _split_metadata(settings, directory: str, totals, seconds: float) -> dict:
    """The metadata of one split's shards in `directory` (with `path`, the
    directory, to pop before writing).

    Raises:
        options.JobFailed: the split's shards hold no record.
    """
    data = settings.data
    shards = _shards(settings, directory)
    held_out = directory != settings.output_dir
    # `num_examples` is counted in the committed shards (frame headers), not
    # taken from the records-written counter: a runner that retried a
    # bundle may keep the failed attempt's counts (BundleBasedDirectRunner
    # does), while the shards hold each record once.
    written = count_records(shards, settings.compression)
    counted = (totals or {}).get(f"{tfrecords.NAMESPACE}/{tfrecords.RECORDS_WRITTEN}")
    if counted is not None and counted != written:
        print(
            f"note: the shards hold {written} records, the runner's counter "
            f"says {counted} (a retried bundle's attempt counted twice); "
            "num_examples is the shards' count",
            flush=True,
        )
    if not written:
        if shards:
            FileSystems.delete(shards)
        if held_out:
            c = totals or {}
            raise options.JobFailed(
                f"--eval_documents={settings.eval_documents} held out "
                f"{held_out_documents(totals)} document(s), which made no "
                "pretraining instance ("
                f"{c.get(f'{sentence_pairs.NAMESPACE}/{sentence_pairs.PAIRS}', 0)}"
                f" pair(s) made); hold out more documents; nothing committed "
                f"to {settings.output_dir}"
            )
        raise options.JobFailed(
            f"no pretraining instances from {settings.input} ("
            f"{why_nothing(totals, settings.empty_files)}); nothing written to "
            f"{settings.output_dir}"
        )
    c = totals or {}
    return {
        "path": directory,
        "format_version": features.METADATA_FORMAT_VERSION,
        "kind": "pretraining",
        "split": "eval" if held_out else "train",
        "num_examples": int(written),
        "num_shards": len(shards),
        "max_seq_length": data.max_seq_length,
        "max_predictions_per_seq": data.max_predictions_per_seq,
        "sentence_task": data.sentence_task,
        "masked_lm_prob": data.masked_lm_prob,
        "short_seq_prob": data.short_seq_prob,
        "dupe_factor": data.dupe_factor,
        "seed": data.seed,
        "whole_word_mask": data.whole_word_mask,
        "do_lower_case": data.do_lower_case,
        "random_tokens": data.random_tokens,
        "bucket_size": data.bucket_size,
        "vocab_size": len(settings.vocab),
        "vocab_sha256": features.vocab_sha256(data.vocab_file),
        "vocab_file": data.vocab_file,
        "inputs": [settings.input],
        "input_files": list(settings.input_files),
        "input_files_empty": list(settings.empty_files),
        "compression": settings.compression,
        "tool_version": metadata.tool_version(),
        "shards": [s.rsplit("/", 1)[-1] for s in shards],
        "eval_documents": settings.eval_documents,
        "held_out_documents": 0,
        "counters": dict(sorted(c.items())) if totals else None,
        "label_counts": {
            str(features.IS_NEXT): c.get(
                f"{sentence_pairs.NAMESPACE}/{sentence_pairs.PAIRS_ACTUAL_NEXT}", 0
            ),
            str(features.NOT_NEXT): c.get(
                f"{sentence_pairs.NAMESPACE}/{sentence_pairs.PAIRS_RANDOM_NEXT}", 0
            ),
        },
        "seconds": round(seconds, 1),
    }


def summary(meta: dict) -> str:
    """A few lines a person reads at the end of a run."""
    c = meta.get("counters") or {}

    def get(ns, name):
        return c.get(f"{ns}/{name}", 0)

    tokens = get(tokenize.NAMESPACE, tokenize.TOKENS)
    unk = get(tokenize.NAMESPACE, tokenize.TOKENS_UNKNOWN)
    lines = [
        f"pretraining_data: {meta['num_examples']} instances in "
        f"{meta['num_shards']} shard(s) in {meta['seconds']} s",
        f"  documents: {get(corpus.NAMESPACE, corpus.DOCUMENTS_READ)} read, "
        f"{get(tokenize.NAMESPACE, tokenize.DOCUMENTS_TOKENIZED)} tokenized, "
        f"{get(tokenize.NAMESPACE, tokenize.DOCUMENTS_EMPTY)} skipped empty, "
        f"{get(sentence_pairs.NAMESPACE, sentence_pairs.DOCUMENTS_ONE_SENTENCE)}"
        " with one sentence, "
        f"{get(sentence_pairs.NAMESPACE, sentence_pairs.DOCUMENTS_DUPLICATE)}"
        " duplicate(s) dropped",
        f"  tokens: {tokens}, [UNK] {unk} ({100.0 * unk / max(tokens, 1):.2f}%)",
        f"  {meta['sentence_task']} labels: 0={meta['label_counts']['0']} "
        f"1={meta['label_counts']['1']}; pairs truncated: "
        f"{get(sentence_pairs.NAMESPACE, sentence_pairs.PAIRS_TRUNCATED)}",
    ]
    held_out = meta.get("eval")
    if held_out:
        lines.append(
            f"  held out: {held_out['held_out_documents']} document(s) "
            f"(--eval_documents={meta['eval_documents']}) -> "
            f"{held_out['num_examples']} instances in {held_out['num_shards']} "
            f"shard(s) in {features.EVAL_SPLIT_DIR}/, none of their text in "
            "training"
        )
    skipped = {
        k: v
        for k, v in c.items()
        if v
        and any(
            w in k for w in ("skipped", "dropped", "undecodable", "lack", "too-long")
        )
    }
    if meta.get("input_files_empty"):
        skipped["input-files-empty"] = len(meta["input_files_empty"])
    if skipped:
        lines.append(
            "  skipped/dropped: " + ", ".join(f"{k}={v}" for k, v in skipped.items())
        )
    if not c:
        lines.append("  (this runner reported no metrics; counts are partial)")
    return "\n".join(lines)


def run(argv=None) -> dict:
    """Runs the job (see `_run`); `--output_dir` is locked while it runs."""
    with output_lock.released_at_end():
        return _run(argv)


def _run(argv=None) -> dict:
    """Runs the job; returns the metadata it wrote ({} for a dry run).

    Raises:
        options.UsageError: bad flags, before any work.
    """
    settings, pipeline_options = options.parse(argv)
    options.lock_output(settings.output_dir, "pipelines.pretraining_data")
    started = time.time()
    result = run_pipeline(settings, pipeline_options)
    if pipeline_options.view_as(TestOptions).dry_run:
        return {}  # Dataflow built the job offline; nothing was written
    meta = write_metadata(settings, result, time.time() - started)
    print(summary(meta))
    return meta


def main(argv=None):
    options.main(run, argv)


if __name__ == "__main__":
    main()
