"""Fine-tuning inputs as tf.data: raw labelled files or classification records.

Two sources, one element shape. Every dataset built here yields unbatched
`(features, label_id)` pairs: `features` is a dict of int32 `[seq]` tensors
(`input_ids`, `input_mask`, `segment_ids`, keys from `configs.features`)
and `label_id` an int32 scalar.

* Raw TSV/CSV/JSONL files are parsed by `configs.labelled_text` (the
  parser the Beam job uses) and tokenized in tf.data with
  `configs.tokenization.build_tokenizer` + `pack_classification_inputs`
  (the code the Beam job and the exported SavedModel run), so the ids are
  the same everywhere. Bad rows are kept with their reason for a
  dead-letter file, never silently dropped.
* A directory of classification records (`pipelines.classification_data`)
  is read with the feature spec of `configs.features`.

`prepare_data` is the one entry `model.finetune` calls: both splits in,
tokenized datasets, label names and the bad-row counts out. Paths may be
local or remote (`gs://`, `ram://`): every file goes through
`configs.fileio`, records through `tf.data`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from configs import features, fileio, labelled_text, tokenization
from configs.metadata import check_compatible, read_metadata
from configs.schema import ConfigError

TOKENIZE_BATCH = 256  # rows per tensorflow-text call while tokenizing
DEFAULT_MAX_BAD_FRACTION = labelled_text.DEFAULT_MAX_BAD_FRACTION
# A quoted field may span at most this many lines before the opening quote
# is taken for a stray one (TSV is read with quoting off).
MAX_QUOTED_LINES = 100


@dataclasses.dataclass
class LabelledRows:
    """The usable and bad rows of one labelled file.

    Attributes:
        path: the file read.
        texts_a: list[str], the text column of each usable row.
        texts_b: list[str] for pair tasks, else None.
        labels: list[str], the raw label value of each usable row.
        bad: list of dead-letter dicts (`line_number`, `reason`, `line`).
        blank: number of empty lines skipped.
    """

    path: str
    texts_a: list
    texts_b: list | None
    labels: list
    bad: list
    blank: int = 0

    def __len__(self):
        return len(self.texts_a)

    def drop_unknown_labels(self, known) -> "LabelledRows":
        """Moves rows whose label is not in `known` to `bad` (in place)."""
        known = set(known)
        keep = [i for i, v in enumerate(self.labels) if v in known]
        for i, v in enumerate(self.labels):
            if v not in known:
                self.bad.append(
                    {
                        "reason": labelled_text.BAD_UNKNOWN_LABEL,
                        "label": v,
                        "text": self.texts_a[i],
                    }
                )
        self.texts_a = [self.texts_a[i] for i in keep]
        if self.texts_b is not None:
            self.texts_b = [self.texts_b[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        return self


def read_labelled_file(
    path: str, *, text_column: str, label_column: str, text_b_column: str = ""
) -> LabelledRows:
    """Parses a TSV/CSV/JSONL file into `LabelledRows` (whole file in memory).

    One row per line. A TSV/CSV row cut by a newline inside a quoted field
    (a short row with an odd number of `"`, up to the next line with an odd
    number) is one bad row, all its lines in the dead letter: its tail is
    never taken for a row of its own.

    Raises:
        ConfigError: missing file, unknown format, a truncated or corrupt
            `.gz`, or a header without the named columns (one line, before
            any work).
    """
    if not fileio.exists(path):
        raise ConfigError(f"{path} does not exist")
    if fileio.isdir(path):
        raise ConfigError(f"{path} is a directory without classification records")
    fmt = labelled_text.detect_format(path)
    data = fileio.read_bytes(path)
    if path.endswith(".gz"):
        import gzip
        import zlib

        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise ConfigError(
                f"{path} cannot be read to its end, truncated or corrupt? ({e})"
            ) from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    columns, first = [], 0
    if fmt != "jsonl":
        if not lines:
            raise ConfigError(f"{path}: empty file")
        header = lines[0].decode("utf-8-sig", errors="replace").rstrip("\r")
        columns = [c.strip() for c in labelled_text.split_line(header, fmt)]
        needed = [("text_column", text_column), ("label_column", label_column)]
        if text_b_column:
            needed.append(("text_b_column", text_b_column))
        for setting, name in needed:
            if name not in columns:
                raise ConfigError(
                    f"{path}: column {name!r} is not in the header "
                    f"(columns: {', '.join(columns)}): set the one to use "
                    f"with --set finetune.{setting}=NAME"
                )
        first = 1
    rows = LabelledRows(path, [], [] if text_b_column else None, [], [])
    i = first
    while i < len(lines):
        line, number = lines[i], i + 1
        status, value = labelled_text.parse_row(
            line,
            fmt=fmt,
            columns=columns,
            text_column=text_column,
            text_b_column=text_b_column,
            label_column=label_column,
        )
        span = 1
        if status == "bad" and value == labelled_text.BAD_COLUMNS:
            span = _quoted_span(lines, i, len(columns))
        i += span
        if status == "ok":
            rows.texts_a.append(value[0])
            if text_b_column:
                rows.texts_b.append(value[1])
            rows.labels.append(value[2])
        elif status == "blank":
            rows.blank += 1
        else:
            bad = {
                "line_number": number,
                "reason": value,
                "line": b"\n".join(lines[number - 1 : number - 1 + span]).decode(
                    "utf-8", errors="backslashreplace"
                ),
            }
            if span > 1:
                bad["lines"] = span  # a quoted field holding newlines
            rows.bad.append(bad)
    return rows


def _quoted_span(lines, i, num_columns) -> int:
    """How many lines from `lines[i]` (a row with too few columns) belong to
    it: through the next line with an odd number of `"` when `lines[i]` has
    an odd number (it opened a quoted field), else 1."""
    if num_columns < 2 or lines[i].count(b'"') % 2 == 0:
        return 1
    for j in range(i + 1, min(len(lines), i + MAX_QUOTED_LINES)):
        if lines[j].count(b'"') % 2 == 1:
            return j - i + 1
    return 1


def write_dead_letter(path: str, bad: list) -> None:
    """Writes bad-row dicts as JSON lines (an empty file when there are none)."""
    fileio.write_atomic(
        path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in bad)
    )


class TextPacker:
    """Raw strings -> packed BERT inputs, as the data job and SavedModel do.

    Args:
        vocab: list[str], the WordPiece vocabulary (id = position).
        do_lower_case: bool, as the vocabulary was built.
        max_seq_length: int, tokens per row incl. `[CLS]`/`[SEP]`.

    Calling it on string tensors `[batch]` (one, or two for pairs) returns a
    dict of int64 `[batch, max_seq_length]` tensors; works eagerly, in
    tf.data and inside a `tf.function`.
    """

    def __init__(self, vocab, do_lower_case, max_seq_length):
        ids = features.special_token_ids(vocab)
        self.tokenizer = tokenization.build_tokenizer(vocab, do_lower_case)
        self.cls_id = ids[features.CLS]
        self.sep_id = ids[features.SEP]
        self.max_seq_length = max_seq_length

    def __call__(self, texts_a, texts_b=None):
        segments = [self.tokenizer.tokenize(texts_a)]
        if texts_b is not None:
            segments.append(self.tokenizer.tokenize(texts_b))
        return tokenization.pack_classification_inputs(
            segments,
            max_seq_length=self.max_seq_length,
            cls_id=self.cls_id,
            sep_id=self.sep_id,
        )


def to_model_inputs(packed: dict) -> dict:
    """int64 packed features -> the int32 dict `BertBackbone` takes."""
    return {
        k: tf.cast(packed[k], tf.int32)
        for k in (features.INPUT_IDS, features.INPUT_MASK, features.SEGMENT_IDS)
    }


def tokenized_dataset(
    rows: LabelledRows, label_ids, packer: TextPacker
) -> tf.data.Dataset:
    """Tokenizes `rows` in tf.data; yields unbatched `(features, label_id)`.

    Args:
        rows: parsed file (usable rows only are used).
        label_ids: list[int], one per usable row.
        packer: the shared `TextPacker`.
    """
    columns = [tf.constant(rows.texts_a, tf.string)]
    if rows.texts_b is not None:
        columns.append(tf.constant(rows.texts_b, tf.string))
    labels = tf.constant(label_ids, tf.int32)
    ds = tf.data.Dataset.from_tensor_slices((tuple(columns), labels))

    def pack(texts, label):
        return to_model_inputs(packer(*texts)), label

    # Tokenize in batches (one tensorflow-text call each), then unbatch.
    return (
        ds.batch(TOKENIZE_BATCH)
        .map(pack, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
    )


def is_records_dir(path: str) -> bool:
    """True when `path` is a directory (of classification records)."""
    return fileio.isdir(path)


def read_records(data_dir: str) -> tuple[tf.data.Dataset, dict | None]:
    """Reads classification records; yields unbatched `(features, label_id)`.

    Returns:
        (dataset, metadata dict or None when the records carry none).

    Raises:
        ConfigError: no record files, or records of another kind.
    """
    meta = read_metadata(data_dir)
    files = sorted(
        f
        for f in fileio.glob(fileio.join(data_dir, "*"))
        if ".tfrecord" in os.path.basename(f) or "tf_record" in os.path.basename(f)
    )
    if not files:
        raise ConfigError(f"{data_dir}: no TFRecord files (*.tfrecord*)")
    for path in files:
        _check_whole(path)
    if meta is None:
        print(
            f"{data_dir}: no metadata.json; reading lengths from the records "
            "and the vocabulary from the config"
        )
        seq_length = _sequence_length_of(files[0])
    else:
        if meta.get("kind") != "classification":
            raise ConfigError(
                f"{data_dir} holds {meta.get('kind')!r} records, not classification"
            )
        seq_length = meta["max_seq_length"]
    specs = features.feature_lengths("classification", seq_length)
    spec = {
        name: tf.io.FixedLenFeature([length], tf.int64)
        for name, (_, length) in specs.items()
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return to_model_inputs(ex), tf.cast(ex[features.LABEL_IDS][0], tf.int32)

    ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds, meta


def _check_whole(path: str) -> None:
    """Stops on a record file cut short (an interrupted writer) before
    training, naming it: tf.data would fail mid-epoch without the name.
    Local uncompressed files only (a header walk, ~1 us per record)."""
    from configs import records

    if fileio.is_remote(path) or path.endswith(".gz"):
        return
    try:
        records.count_records(path)
    except records.RecordError as e:
        raise ConfigError(str(e)) from None


def count_records(ds: tf.data.Dataset) -> int:
    return int(ds.reduce(0, lambda n, _: n + 1).numpy())


def _sequence_length_of(path: str) -> int:
    for raw in tf.data.TFRecordDataset([path]).take(1):
        ex = tf.train.Example.FromString(raw.numpy())
        return len(ex.features.feature[features.INPUT_IDS].int64_list.value)
    raise ConfigError(f"{path} holds no records")


def length_grouped_batches(
    ds: tf.data.Dataset,
    batch_size: int,
    *,
    seed: int,
    group_batches: int = 16,
    pad_multiple: int = 8,
) -> tf.data.Dataset:
    """Batches of similar length, each trimmed to its longest row.

    Fixed-length padding wastes most of a short-text step: SST-2 sentences
    average 25 tokens against `max_seq_length` 64, and a random batch's
    longest row is ~58. So `group_batches` consecutive batches' worth of
    rows are sorted by length and cut into batches, those batches are
    shuffled among themselves, and each is cut to its longest row rounded
    up to `pad_multiple` (few distinct shapes: few traces). Rows stay in
    `ds`'s (shuffled) order across groups, so every epoch still sees every
    row once when `ds` is shuffled then repeated. The idea is the
    "group_by_length" sampler of fine-tuning libraries.

    Args:
        ds: unbatched `(features, label_id)`; features are int32 `[seq]`
            with the real tokens first (`input_mask` 1) and padding after.
        batch_size: rows per batch.
        seed: shuffles the order of batches inside each group.
        group_batches: batches per sorted group (1 = only trimming).
        pad_multiple: batch widths are multiples of this (capped at `seq`).

    Returns:
        `(features, label_id)` batches: int32 `[batch_size, width]` features
        with `width <= seq`, int32 `[batch_size]` labels. A last short
        group gives smaller batches, as `Dataset.batch` does.
    """

    def sort_group(x, y):
        order = tf.argsort(tf.reduce_sum(x[features.INPUT_MASK], axis=1), stable=True)
        return tf.nest.map_structure(lambda t: tf.gather(t, order), (x, y))

    def trim(x, y):
        longest = tf.reduce_max(tf.reduce_sum(x[features.INPUT_MASK], axis=1))
        width = -(-longest // pad_multiple) * pad_multiple
        width = tf.minimum(width, tf.shape(x[features.INPUT_IDS])[1])
        return {k: v[:, :width] for k, v in x.items()}, y

    return (
        ds.batch(batch_size * group_batches)
        .map(sort_group)
        .unbatch()
        .batch(batch_size)
        .shuffle(group_batches, seed=seed, reshuffle_each_iteration=True)
        .map(trim, num_parallel_calls=tf.data.AUTOTUNE)
    )


# === The one data-preparation entry of model.finetune ===
@dataclasses.dataclass
class PreparedData:
    """Both splits, ready for training.

    Attributes:
        train, eval: tf.data of unbatched `(features, label_id)` (see the
            module doc), tokenized lazily (cache them to tokenize once).
        labels: list[str], the label values in id order.
        num_train, num_eval: int, examples in each split.
        num_bad: {"train": int, "eval": int}, rows set aside as bad (raw
            files; 0 for records, whose job counted its own).
        dead_letters: {"train"/"eval": path} of the dead-letter files.
    """

    train: tf.data.Dataset
    eval: tf.data.Dataset
    labels: list
    num_train: int
    num_eval: int
    num_bad: dict
    dead_letters: dict


@dataclasses.dataclass
class _Split:
    """One of train/eval as read, before label ids are fixed."""

    role: str  # "train" or "eval"
    path: str
    rows: LabelledRows | None = None  # raw files
    dataset: tf.data.Dataset | None = None  # records
    meta: dict | None = None  # the records' metadata.json
    num_examples: int = 0


def prepare_data(
    cfg,
    *,
    train_path: str,
    eval_path: str,
    vocab: list,
    vocab_path: str,
    out_dir: str,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> PreparedData:
    """Reads, checks and tokenizes both splits (raw files or records).

    Labels come from the records' metadata, else `cfg.finetune.labels`,
    else the train file's values (sorted). Rows of a raw file that are bad
    (unparseable, missing text or label, a label outside the labels) go to
    `out_dir/dead_letter_{train,eval}.jsonl` and are counted.

    Raises:
        ConfigError: one line, before any training: records made for another
            model, label sets that disagree, no usable row, or more than
            `max_bad_fraction` of a file's rows bad (the error names the
            setting to change: `finetune.labels` or `--max_bad_fraction`).
    """
    train = _open_split(train_path, "train", cfg, vocab_path)
    evaluation = _open_split(eval_path, "eval", cfg, vocab_path)
    labels = _resolve_labels(cfg, train, evaluation)
    num_bad, dead_letters = {}, {}
    for split in (train, evaluation):
        dead_letters[split.role] = fileio.join(
            out_dir, f"dead_letter_{split.role}.jsonl"
        )
        num_bad[split.role] = _set_aside_bad_rows(
            split, labels, dead_letters[split.role], max_bad_fraction
        )
    packer = TextPacker(vocab, cfg.data.do_lower_case, cfg.finetune.max_seq_length)
    index = {value: i for i, value in enumerate(labels)}
    datasets = [
        (
            split.dataset
            if split.rows is None
            else tokenized_dataset(
                split.rows, [index[v] for v in split.rows.labels], packer
            )
        )
        for split in (train, evaluation)
    ]
    return PreparedData(
        train=datasets[0],
        eval=datasets[1],
        labels=labels,
        num_train=train.num_examples,
        num_eval=evaluation.num_examples,
        num_bad=num_bad,
        dead_letters=dead_letters,
    )


def _open_split(path, role, cfg, vocab_path) -> _Split:
    if not fileio.exists(path):
        raise ConfigError(f"--{role} {path} does not exist")
    if not is_records_dir(path):
        rows = read_labelled_file(
            path,
            text_column=cfg.finetune.text_column,
            text_b_column=cfg.finetune.text_b_column,
            label_column=cfg.finetune.label_column,
        )
        return _Split(role, path, rows=rows, num_examples=len(rows))
    ds, meta = read_records(path)
    if meta is None:
        n = count_records(ds)
    else:
        check_compatible(
            meta,
            kind="classification",
            max_seq_length=cfg.finetune.max_seq_length,
            vocabulary_size=cfg.model.vocabulary_size,
            vocab_sha256=features.vocab_sha256(vocab_path),
            max_sequence_length=cfg.model.max_sequence_length,
        )
        casing = meta.get("do_lower_case", cfg.data.do_lower_case)
        if casing != cfg.data.do_lower_case:
            raise ConfigError(
                f"{path}: records were made with do_lower_case={casing}, the "
                f"model uses {cfg.data.do_lower_case}"
            )
        n = meta["num_examples"]
    if n == 0:
        raise ConfigError(f"--{role} {path}: no usable rows")
    return _Split(role, path, dataset=ds, meta=meta, num_examples=n)


def _resolve_labels(cfg, train: _Split, evaluation: _Split) -> list:
    """The label values in id order (see `prepare_data`)."""
    configured = list(cfg.finetune.labels)
    from_records = [s.meta["labels"] for s in (train, evaluation) if s.meta]
    if from_records:
        labels = list(from_records[0])
        if configured and configured != labels:
            raise ConfigError(
                f"records have labels {labels}, finetune.labels says {configured}: "
                f"set finetune.labels={','.join(labels)} (or [] to take the records')"
            )
        return labels
    if configured:
        return configured
    if train.rows is None:
        raise ConfigError(
            f"{train.path}: records without metadata.json carry no label names: "
            "set finetune.labels"
        )
    train_labels = set(train.rows.labels)
    if evaluation.rows is not None and set(evaluation.rows.labels) != train_labels:
        raise ConfigError(
            "label sets differ between train "
            f"({', '.join(labelled_text.sort_labels(train_labels))}) and eval "
            f"({', '.join(labelled_text.sort_labels(evaluation.rows.labels))})"
        )
    return labelled_text.sort_labels(train_labels)


def _set_aside_bad_rows(split, labels, dead_letter, max_bad_fraction) -> int:
    """Moves rows with unknown labels to the bad ones, writes the dead
    letter and checks the bad-row ceiling; returns the number of bad rows."""
    rows = split.rows
    if rows is None:
        return 0
    outside = sorted(set(rows.labels) - set(labels))
    rows.drop_unknown_labels(labels)
    write_dead_letter(dead_letter, rows.bad)
    bad, usable = len(rows.bad), len(rows)
    print(
        f"{split.role}: {usable} usable rows from {split.path}"
        + (f", {bad} bad row(s) -> {dead_letter}" if bad else ", 0 bad rows")
    )
    setting = f"finetune.labels [{', '.join(labels)}]"
    if usable == 0:
        if outside:
            raise ConfigError(
                f"{split.path}: none of its labels ({', '.join(outside)}) is in "
                f"{setting}: set finetune.labels to the file's labels "
                f"(--set finetune.labels={','.join(outside)})"
            )
        raise ConfigError(
            f"{split.path}: no usable rows ({bad} bad, see {dead_letter})"
        )
    fraction = bad / (bad + usable)
    if fraction > max_bad_fraction:
        reasons: dict = {}
        for b in rows.bad:
            reasons[b["reason"]] = reasons.get(b["reason"], 0) + 1
        detail = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
        hint = f"; labels outside {setting}: {', '.join(outside)}" if outside else ""
        raise ConfigError(
            f"{split.path}: {bad} of {bad + usable} rows are bad ({fraction:.1%} > "
            f"--max_bad_fraction={max_bad_fraction}: {detail}; see "
            f"{dead_letter}){hint}"
        )
    split.num_examples = usable
    return bad
