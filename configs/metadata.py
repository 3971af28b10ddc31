"""`metadata.json`: what every data job writes and every consumer checks.

The fix for data/training drift (USERS.md #4): the trainer compares the
records' metadata with its own config *before building anything* and stops
with one line naming every mismatch. Records without metadata (written by
google-research/bert or the Model Garden) are accepted with a one-line
notice; lengths are then read from the records themselves.
"""

from __future__ import annotations

import json
import os

from configs import features, fileio
from configs.schema import ConfigError

# Keys every pretraining metadata.json carries (DESIGN.md).
PRETRAINING_KEYS = (
    "format_version",
    "kind",
    "num_examples",
    "num_shards",
    "max_seq_length",
    "max_predictions_per_seq",
    "sentence_task",
    "masked_lm_prob",
    "dupe_factor",
    "seed",
    "whole_word_mask",
    "do_lower_case",
    "vocab_size",
    "vocab_sha256",
    "inputs",
    "tool_version",
)
CLASSIFICATION_KEYS = (
    "format_version",
    "kind",
    "num_examples",
    "num_shards",
    "max_seq_length",
    "do_lower_case",
    "vocab_size",
    "vocab_sha256",
    "labels",
    "inputs",
    "tool_version",
)


def tool_version() -> str:
    """The installed project's version string."""
    try:
        from importlib.metadata import version

        return version("bert-beam-keras")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


def metadata_path(data_dir: str) -> str:
    return os.path.join(data_dir, features.METADATA_FILE)


def read_metadata(data_dir: str) -> dict | None:
    """Returns the parsed `metadata.json` of `data_dir`, or None if absent."""
    path = metadata_path(data_dir)
    if not fileio.exists(path):
        return None
    try:
        meta = json.loads(fileio.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if meta.get("format_version") != features.METADATA_FORMAT_VERSION:
        raise ConfigError(
            f"{path}: format_version {meta.get('format_version')!r} is not "
            f"{features.METADATA_FORMAT_VERSION}"
        )
    return meta


def held_out_split(data_dir: str) -> str | None:
    """`data_dir/eval` when it holds a committed held-out split (the data
    job's `--eval_documents`: shards + a `metadata.json` of its own), else
    None. Its shards are never among `data_dir`'s training shards: readers
    list `data_dir/*.tfrecord*`, not sub-directories."""
    path = fileio.join(data_dir, features.EVAL_SPLIT_DIR)
    return path if fileio.exists(metadata_path(path)) else None


def write_metadata(data_dir: str, meta: dict) -> str:
    """Writes `meta` as `data_dir/metadata.json` (sorted keys, indented).

    Atomically (temporary name, then rename): the file is the commit
    marker of a data job's output, so it is never seen half written.
    """
    path = metadata_path(data_dir)
    return fileio.write_atomic(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def check_compatible(
    meta: dict,
    *,
    kind: str,
    max_seq_length: int | None = None,
    max_predictions_per_seq: int | None = None,
    vocabulary_size: int | None = None,
    vocab_sha256: str | None = None,
    max_sequence_length: int | None = None,
) -> None:
    """Raises ConfigError listing every mismatch between records and config.

    Args:
        meta: parsed metadata.json.
        kind: the record kind the consumer expects.
        max_seq_length, max_predictions_per_seq: the consumer's data config
            (None = do not check).
        vocabulary_size: rows of the model's token embedding; the records'
            vocab must have exactly this many tokens.
        vocab_sha256: the consumer's vocab file hash (None = do not check).
        max_sequence_length: the model's position table; must hold the
            records' sequences.
    """
    problems = []
    if meta.get("kind") != kind:
        problems.append(f"records are {meta.get('kind')!r}, expected {kind!r}")

    def differs(key, want):
        if want is not None and meta.get(key) != want:
            problems.append(f"{key} is {meta.get(key)} in the records, {want} here")

    differs("max_seq_length", max_seq_length)
    if kind == "pretraining":
        differs("max_predictions_per_seq", max_predictions_per_seq)
    differs("vocab_size", vocabulary_size)
    differs("vocab_sha256", vocab_sha256)
    if (
        max_sequence_length is not None
        and meta.get("max_seq_length", 0) > max_sequence_length
    ):
        problems.append(
            f"max_seq_length {meta.get('max_seq_length')} of the records exceeds "
            f"the model's max_sequence_length {max_sequence_length}"
        )
    if problems:
        raise ConfigError("records do not match the config: " + "; ".join(problems))
