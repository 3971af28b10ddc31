"""Labelled text rows (TSV, CSV, JSON Lines): one parser for Beam and tf.data.

`pipelines.classification_data` (Beam) and `model.text_data` (fine-tuning
straight from raw files) both parse rows here, so a row is good or bad, and
its label is read, the same way in both. Pure Python, TF-free.

Formats: TSV read with quoting off (SST-2 has unbalanced `"`), CSV with
standard quoting, JSON Lines (one object per line). TSV/CSV files start
with a header naming the columns. One row per line.
"""

from __future__ import annotations

import csv
import json

from configs.schema import ConfigError

# Reasons a row is bad (dead-letter `reason`, Beam counter names).
# More bad rows than this fraction of a file: it is probably the wrong file
# (the fine-tuning job and classification_data stop; 1 accepts any number).
DEFAULT_MAX_BAD_FRACTION = 0.1

_FIELD_LIMIT = 2**31 - 1  # the C long the csv module stores it in
BAD_UNDECODABLE = "undecodable-bytes"
BAD_COLUMNS = "wrong-column-count"
BAD_JSON = "unparseable-json"
BAD_MISSING_TEXT = "missing-text"
BAD_MISSING_LABEL = "missing-label"
BAD_UNKNOWN_LABEL = "unknown-label"
BAD_REASONS = (
    BAD_UNDECODABLE,
    BAD_COLUMNS,
    BAD_JSON,
    BAD_MISSING_TEXT,
    BAD_MISSING_LABEL,
    BAD_UNKNOWN_LABEL,
)
TEXT_FORMAT = "text"  # plain text: each line is one text (parse_record)


def detect_format(path: str) -> str:
    """Returns "tsv", "csv" or "jsonl" from a file name."""
    lower = path.lower()
    for suffix in (".gz", ".bz2"):
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
    if lower.endswith((".jsonl", ".json")):
        return "jsonl"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".tsv"):
        return "tsv"
    raise ConfigError(
        f"cannot tell the format of {path}: name it *.tsv, *.csv or *.jsonl"
    )


def split_line(line: str, fmt: str) -> list[str]:
    """Splits one TSV/CSV line into fields (TSV: quoting off, as SST-2 needs).

    The csv module refuses fields over 128 KiB by default (a `csv.Error`
    that would read as a wrong column count); a line is bounded by the
    jobs' own `--max_line_bytes` instead, so the limit is lifted here, on
    first use rather than at import.
    """
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    if fmt == "tsv":
        return next(csv.reader([line], delimiter="\t", quoting=csv.QUOTE_NONE))
    return next(csv.reader([line]))


def parse_row(
    line: bytes,
    *,
    fmt: str,
    columns: list[str],
    text_column: str,
    text_b_column: str,
    label_column: str,
):
    """Parses one raw line into `(text_a, text_b, label)` or a bad-row reason.

    Args:
        line: bytes of one line, without its newline.
        fmt: "tsv", "csv" or "jsonl".
        columns: header names (TSV/CSV; ignored for JSONL).
        text_column, text_b_column, label_column: field names
            (`text_b_column=""` for single sentences).

    Returns:
        `("ok", (text_a: str, text_b: str | None, label: str))`,
        `("bad", reason)` with a reason from `BAD_REASONS`, or
        `("blank", None)` for an empty line.
    """
    status, value = parse_record(
        line,
        fmt=fmt,
        columns=columns,
        text_column=text_column,
        text_b_column=text_b_column,
        label_column=label_column,
    )
    if status != "ok":
        return status, value
    _, text_a, text_b, label = value
    if not label:
        return "bad", BAD_MISSING_LABEL
    return "ok", (text_a, text_b, label)


def parse_record(
    line: bytes,
    *,
    fmt: str,
    columns: list[str],
    text_column: str,
    text_b_column: str = "",
    label_column: str = "",
):
    """Parses one raw line into its fields, its text and its label (if any).

    The general form of `parse_row`, for readers that keep every field of
    a row (`pipelines.batch_predict` writes them next to its predictions)
    and for unlabelled rows: with `label_column=""` no label is read.

    Args:
        line: bytes of one line, without its newline.
        fmt: "tsv", "csv", "jsonl" or "text" (the whole line is the text,
            its one field named `text_column`).
        columns: header names (TSV/CSV; ignored otherwise).
        text_column, text_b_column, label_column: field names (empty
            `text_b_column`/`label_column`: none).

    Returns:
        `("ok", (fields, text_a, text_b, label))`: `fields` is a dict of
        the row's fields in file order (TSV/CSV values are `str`; JSONL
        values as decoded), `text_a: str`, `text_b: str | None`, `label:
        str` (`""` when the row has none; `None` with `label_column=""`);
        `("bad", reason)` with a reason from `BAD_REASONS`; or
        `("blank", None)` for an empty line.
    """
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return "bad", BAD_UNDECODABLE
    if not text.strip():
        return "blank", None
    if fmt == TEXT_FORMAT:
        record = {text_column: text}
    elif fmt == "jsonl":
        try:
            record = json.loads(text)
        except ValueError:
            return "bad", BAD_JSON
        if not isinstance(record, dict):
            return "bad", BAD_JSON
    else:
        try:
            values = split_line(text, fmt)
        except csv.Error:
            return "bad", BAD_COLUMNS
        if len(values) != len(columns):
            return "bad", BAD_COLUMNS
        record = dict(zip(columns, values))

    def field(name):
        value = record.get(name)
        if value is None or isinstance(value, (dict, list)):
            return ""
        if isinstance(value, bool):
            return str(int(value))
        return str(value).strip()

    text_a = field(text_column)
    text_b = field(text_b_column) if text_b_column else None
    label = field(label_column) if label_column else None
    if not text_a or (text_b_column and not text_b):
        return "bad", BAD_MISSING_TEXT
    return "ok", (record, text_a, text_b, label)


def detect_input_format(path: str) -> str:
    """`detect_format`, with "text" (one text per line) for other names."""
    try:
        return detect_format(path)
    except ConfigError:
        return TEXT_FORMAT


def sort_labels(labels) -> list[str]:
    """Label values in a stable order: numerically if all are ints, else by text."""
    labels = sorted(set(labels))
    try:
        return sorted(labels, key=int)
    except ValueError:
        return labels
