"""Rows to score: TSV/CSV/JSONL/plain-text lines -> ((fields, label), text).

`ParseRows` reads each line with `configs.labelled_text` (the rules
`pipelines.classification_data` uses); a bad row goes to the `bad` output
as a dead letter `{"reason", "file", "line"}` and is counted.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from configs import labelled_text
from configs.schema import ConfigError
from pipelines import corpus

DEFAULT_MAX_LINE_BYTES = corpus.DEFAULT_MAX_LINE_BYTES  # 1 MiB

# === Counters (namespace = the transform's class name) ===
PARSE_NAMESPACE = "ParseRows"
ROWS_READ = "rows-read"
ROWS_BLANK = "rows-skipped-blank"
BAD_TOO_LONG = "line-too-long"
BAD_REASONS = tuple(
    r for r in labelled_text.BAD_REASONS if r != labelled_text.BAD_UNKNOWN_LABEL
) + (BAD_TOO_LONG,)


# === Rows ===
def _dead_letter(reason: str, path: str, line: bytes) -> dict:
    return {
        "reason": reason,
        "file": path,
        "line": line.decode("utf-8", errors="backslashreplace"),
    }


class _ParseRowFn(beam.DoFn):
    """(file, bytes line) -> ((fields, label), text); bad rows to `bad`."""

    def __init__(self, *, fmt, columns, text_column, label_column, max_line_bytes):
        self._kwargs = dict(
            fmt=fmt,
            columns=list(columns),
            text_column=text_column,
            label_column=label_column,
        )
        self._max_line_bytes = max_line_bytes
        self._read = Metrics.counter(PARSE_NAMESPACE, ROWS_READ)
        self._blank = Metrics.counter(PARSE_NAMESPACE, ROWS_BLANK)
        self._bad = {r: Metrics.counter(PARSE_NAMESPACE, r) for r in BAD_REASONS}

    def process(self, element):
        path, line = element
        self._read.inc()
        if len(line) > self._max_line_bytes:
            status, value = "bad", BAD_TOO_LONG
        else:
            status, value = labelled_text.parse_record(line, **self._kwargs)
        if status == "blank":
            self._blank.inc()
            return
        if status == "ok":
            fields, text, _, label = value
            if label == "":  # a labelled run needs every row's label
                status, value = "bad", labelled_text.BAD_MISSING_LABEL
            else:
                yield (fields, label), text
                return
        self._bad[value].inc()
        yield beam.pvalue.TaggedOutput("bad", _dead_letter(value, path, line))


class ParseRows(beam.PTransform):
    """Parses raw lines into texts to score, keyed by their row.

    Input: `(file: str, line: bytes)` (no header lines). Output: a dict of
    PCollections: `"rows"`: `((fields: dict, label: str | None), text:
    str)`, ready for a `KeyedModelHandler`; `"bad"`: dead-letter dicts
    (`reason`, `file`, `line`). Blank lines are counted, not passed on.
    """

    def __init__(
        self,
        *,
        fmt: str,
        columns: list[str],
        text_column: str,
        label_column: str = "",
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ):
        super().__init__()
        if fmt not in ("tsv", "csv", "jsonl", labelled_text.TEXT_FORMAT):
            raise ValueError(f"unknown format {fmt!r}")
        if fmt in ("tsv", "csv"):
            for name in filter(None, (text_column, label_column)):
                if name not in columns:
                    raise ConfigError(
                        f"column {name!r} is not in the header "
                        f"(columns: {', '.join(columns)})"
                    )
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._fn = _ParseRowFn(
            fmt=fmt,
            columns=columns,
            text_column=text_column,
            label_column=label_column,
            max_line_bytes=max_line_bytes,
        )

    def expand(self, lines):
        parsed = lines | "Parse" >> beam.ParDo(self._fn).with_outputs(
            "bad", main="rows"
        )
        return {"rows": parsed.rows, "bad": parsed.bad}
