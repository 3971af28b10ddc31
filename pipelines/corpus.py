"""Reading raw corpora into documents: `ReadDocuments`.

Formats (chosen per file, so one glob may mix them):
  * plain text (`*.txt`, anything else): one sentence per line, a blank
    (empty or whitespace-only) line ends a document (google-research/bert's
    raw format);
  * JSON Lines (`*.jsonl`, `*.json`): one record per line; the record's
    `text_field` is one document, split into lines on newlines;
  * either of them gzip- or bzip2-compressed (Beam detects `.gz`/`.bz2`).

Uncompressed files are split across workers at document boundaries by
`DocumentSource`, a splittable `FileBasedSource`: the byte range
`[start, stop)` owns exactly the documents whose first line starts inside
it (for JSONL: the records whose line starts inside it), so every document
is read exactly once however the file is cut, and dynamic work rebalancing
on Dataflow stays correct. Compressed files cannot be sought into and are
read whole by one worker: give a big corpus as many `.gz` shards, or
uncompressed.

Bad input never fails the job; it is counted (namespace `ReadDocuments`):
lines that are not valid UTF-8 are decoded with U+FFFD replacements, lines
longer than `max_line_bytes` are dropped, unparseable JSONL records and
records without the text field are skipped. A compressed file that is
truncated or corrupt is the exception: it stops the job with one line
naming the file (`pipelines.errors.JobFailed`), since the rest of it
would otherwise be lost without a count.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import zlib

import apache_beam as beam
from apache_beam.io import filebasedsource
from apache_beam.io.filesystem import CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines.errors import input_error

# === Counters (namespace = the transform's class name) ===
NAMESPACE = "ReadDocuments"
DOCUMENTS_READ = "documents-read"
LINES_READ = "lines-read"
LINES_UNDECODABLE = "lines-undecodable"
LINES_TOO_LONG = "lines-dropped-too-long"
RECORDS_UNPARSEABLE = "records-skipped-unparseable"
RECORDS_WITHOUT_TEXT = "records-skipped-without-text-field"
COUNTER_NAMES = (
    DOCUMENTS_READ,
    LINES_READ,
    LINES_UNDECODABLE,
    LINES_TOO_LONG,
    RECORDS_UNPARSEABLE,
    RECORDS_WITHOUT_TEXT,
)

DEFAULT_MAX_LINE_BYTES = 1 << 20  # 1 MiB: longer "lines" are not sentences
JSON_SUFFIXES = (".jsonl", ".json")
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".deflate", ".zst", ".zstd", ".lzma", ".xz")
_WHITESPACE = b" \t\r\n\x0b\x0c"
_BACKSCAN_CHUNK = 4096


def split_patterns(file_patterns: str) -> list[str]:
    """Splits a comma-separated list of globs; empty items are ignored."""
    return [p.strip() for p in file_patterns.split(",") if p.strip()]


def expand_patterns(file_patterns: str) -> list[str]:
    """Returns the sorted file paths matched by a glob or comma-separated globs.

    Works on every Beam filesystem (local, gs://, ...). Raises ValueError
    with one line naming the first pattern that matches nothing.
    """
    patterns = split_patterns(file_patterns)
    if not patterns:
        raise ValueError("no input file pattern given")
    paths = []
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # BeamIOError for a missing directory, ...
            raise ValueError(f"input {pattern!r} matches no file ({e})") from None
        if not matched:
            raise ValueError(f"input {pattern!r} matches no file")
        # A local directory matches itself; reading it would fail late with
        # a misleading "truncated or corrupt?" line.
        dirs = [m.path for m in matched if os.path.isdir(m.path)]
        if dirs:
            raise ValueError(
                f"input {dirs[0]!r} is a directory; pass a glob of its files, "
                f"e.g. --input='{dirs[0].rstrip('/')}/*'"
            )
        paths.extend(m.path for m in matched)
    return sorted(set(paths))


def is_json_lines(path: str) -> bool:
    """True when `path` (compression suffix ignored) names a JSONL file."""
    name = path.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.endswith(JSON_SUFFIXES)


def _count(name: str, value: int = 1) -> None:
    Metrics.counter(NAMESPACE, name).inc(value)


def _decode(raw: bytes) -> str:
    """UTF-8 text of one line without its line ending; counts bad bytes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _count(LINES_UNDECODABLE)
        text = raw.decode("utf-8", errors="replace")
    return text.rstrip("\r\n")


def _is_blank(raw: bytes) -> bool:
    return not raw.strip(_WHITESPACE)


class _RawAdapter(io.RawIOBase):
    """Presents Beam's CompressedFile as a raw stream for io.BufferedReader."""

    def __init__(self, f):
        self._f = f

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._f.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Closing(io.BufferedReader):
    """A decompressing reader that also closes the raw stream under it."""

    def __init__(self, reader, raw):
        super().__init__(reader, buffer_size=1 << 20)
        self._raw = raw

    def close(self):
        try:
            super().close()
        finally:
            self._raw.close()


class DocumentSource(filebasedsource.FileBasedSource):
    """Splittable source of `(doc_id, lines)` documents.

    Output elements: `(doc_id: str, lines: list[str])`; `doc_id` is
    `"PATH:BYTE_OFFSET"` of the document's first line (of its record for
    JSONL), unique and stable across runs and runners; `lines` are the
    document's non-blank lines, stripped of line endings.

    Splitting: a range owns the documents that *start* in it. A reader
    whose range starts mid-file looks back at the line before its first
    whole line to learn whether that line begins a document.
    """

    def __init__(
        self,
        file_pattern: str,
        *,
        text_field: str = "text",
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        min_bundle_size: int = 0,
        validate: bool = True,
    ):
        super().__init__(
            file_pattern, min_bundle_size=min_bundle_size, validate=validate
        )
        self._text_field = text_field
        self._max_line_bytes = max_line_bytes

    def read_records(self, file_name, offset_range_tracker):
        reader = self._read_json if is_json_lines(file_name) else self._read_text
        try:
            with self._open(file_name) as f:
                yield from reader(file_name, f, offset_range_tracker)
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            # A cut or damaged compressed file: the rest of it would be lost
            # without a trace, so the job stops and names the file.
            raise input_error(
                f"input {file_name} cannot be read to its end, truncated or "
                f"corrupt? ({type(e).__name__}: {e})"
            ) from None

    def _open(self, file_name):
        """A readable binary stream of `file_name`'s uncompressed bytes.

        gzip and bzip2 (read whole from the start: unsplittable) go through
        Python's `gzip`/`bz2`, which raise `EOFError` at a file cut short
        and `OSError`/`zlib.error` at damage; Beam's `CompressedFile` stops
        silently at the cut. Other compressions keep Beam's reader.
        """
        kind = CompressionTypes.detect_compression_type(file_name)
        if kind in (CompressionTypes.GZIP, CompressionTypes.BZIP2):
            raw = FileSystems.open(
                file_name, compression_type=CompressionTypes.UNCOMPRESSED
            )
            opener = gzip.GzipFile if kind == CompressionTypes.GZIP else bz2.BZ2File
            return _Closing(opener(fileobj=raw, mode="rb"), raw)
        f = self.open_file(file_name)
        if isinstance(f, CompressedFile):
            # Read whole from the start (unsplittable); Beam's
            # CompressedFile has no readline(limit), so buffer it.
            return io.BufferedReader(_RawAdapter(f), buffer_size=1 << 20)
        return f

    # === Line reading with positions ===
    def _lines(self, f, position):
        """Yields `(offset, raw_line)` from `position`; over-long lines -> None.

        `raw_line` keeps its line ending. Memory is bounded by
        `max_line_bytes` even for a 1 GB line without newlines.
        """
        limit = self._max_line_bytes
        while True:
            raw = f.readline(limit + 1)
            if not raw:
                return
            start = position
            position += len(raw)
            if len(raw) > limit and raw[-1:] != b"\n":
                # Drain the rest of the over-long line in bounded chunks.
                while raw[-1:] != b"\n":
                    raw = f.readline(limit + 1)
                    if not raw:
                        break
                    position += len(raw)
                _count(LINES_TOO_LONG)
                yield start, None
            else:
                yield start, raw

    def _seek_line_start(self, f, start):
        """Moves `f` to the first line start >= `start`; returns it and whether
        the line before it is blank (or absent, at the file start)."""
        if start == 0:  # freshly opened: no seek (compressed streams)
            return 0, True
        f.seek(start - 1)
        tail = f.readline(self._max_line_bytes + 1)
        # `tail` is the end of the line holding byte start-1 (just "\n" when
        # `start` already is a line start). Drain it if it is over-long.
        position = start - 1 + len(tail)
        tail_blank = _is_blank(tail)
        while tail and tail[-1:] != b"\n":
            tail = f.readline(self._max_line_bytes + 1)
            position += len(tail)
            tail_blank = tail_blank and _is_blank(tail)
        if not tail_blank:
            return position, False
        # The bytes from start-1 on are blank; look back for the rest.
        blank = self._blank_backwards(f, start - 1)
        f.seek(position)
        return position, blank

    @staticmethod
    def _blank_backwards(f, end):
        """True when bytes before `end` back to the previous newline (or the
        file start) are all whitespace."""
        while end > 0:
            begin = max(0, end - _BACKSCAN_CHUNK)
            f.seek(begin)
            chunk = f.read(end - begin)
            newline = chunk.rfind(b"\n")
            if not _is_blank(chunk[newline + 1 :]):
                return False
            if newline >= 0:
                return True
            end = begin
        return True

    # === Formats ===
    def _read_text(self, file_name, f, tracker):
        position, at_document_start = self._seek_line_start(f, tracker.start_position())
        # States: "skip" = inside a document owned by an earlier range;
        # "between" = after a blank line; "inside" = reading our document.
        state = "between" if at_document_start else "skip"
        doc_start, lines = 0, []
        for offset, raw in self._lines(f, position):
            blank = raw is not None and _is_blank(raw)
            if blank:
                if state == "inside":
                    yield self._document(file_name, doc_start, lines)
                    lines = []
                state = "between"
                continue
            if state == "between":
                if not tracker.try_claim(offset):
                    return
                state, doc_start = "inside", offset
            if state == "inside" and raw is not None:
                lines.append(_decode(raw))
        if state == "inside":
            yield self._document(file_name, doc_start, lines)

    def _read_json(self, file_name, f, tracker):
        position, _ = self._seek_line_start(f, tracker.start_position())
        for offset, raw in self._lines(f, position):
            if not tracker.try_claim(offset):
                return
            if raw is None or _is_blank(raw):
                continue
            try:
                record = json.loads(_decode(raw))
            except ValueError:
                _count(RECORDS_UNPARSEABLE)
                continue
            text = record.get(self._text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                _count(RECORDS_WITHOUT_TEXT)
                continue
            lines = [line.strip() for line in text.split("\n")]
            lines = [line for line in lines if line]
            yield self._document(file_name, offset, lines)

    @staticmethod
    def _document(file_name, offset, lines):
        _count(DOCUMENTS_READ)
        _count(LINES_READ, len(lines))
        return f"{file_name}:{offset}", lines


class ReadDocuments(beam.PTransform):
    """Reads documents from text, gzip and JSONL corpora.

    Input: PBegin. Output: PCollection of `(doc_id: str, lines: list[str])`,
    one element per document (see `DocumentSource`). A document may have no
    lines (a JSONL record with empty text): downstream stages count it as
    empty rather than this one hiding it.

    Args:
        file_patterns: a glob or comma-separated globs on any Beam
            filesystem. Each must match at least one file; checked here, at
            construction, so a typo stops the job before any work.
        text_field: the JSONL field holding a document's text.
        max_line_bytes: longer lines are counted and dropped.
    """

    def __init__(
        self,
        *,
        file_patterns: str,
        text_field: str = "text",
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ):
        super().__init__()
        if not text_field:
            raise ValueError("text_field must not be empty")
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._patterns = split_patterns(file_patterns)
        self.files = expand_patterns(file_patterns)  # raises on no match
        self._text_field = text_field
        self._max_line_bytes = max_line_bytes

    def expand(self, pbegin):
        # One splittable source per glob; Beam splits each file by bytes.
        sources = [
            pbegin
            | f"Read {pattern}"
            >> beam.io.Read(
                DocumentSource(
                    pattern,
                    text_field=self._text_field,
                    max_line_bytes=self._max_line_bytes,
                )
            )
            for pattern in self._patterns
        ]
        if len(sources) == 1:
            return sources[0]
        return sources | "MergeInputs" >> beam.Flatten()


def empty_files(paths: list[str]) -> list[str]:
    """The paths among `paths` that hold zero bytes (Beam skips them)."""
    sizes = FileSystems.match(paths)
    return [m.path for r in sizes for m in r.metadata_list if m.size_in_bytes == 0]
