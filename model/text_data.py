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
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from configs import features, labelled_text, tokenization
from configs.metadata import read_metadata
from configs.schema import ConfigError

TOKENIZE_BATCH = 256  # rows per tensorflow-text call while tokenizing


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

    Raises:
        ConfigError: missing file, unknown format, or a header without the
            named columns (one line, before any work).
    """
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{path} does not exist")
    fmt = labelled_text.detect_format(path)
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        import gzip

        data = gzip.decompress(data)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    columns, first = [], 0
    if fmt != "jsonl":
        if not lines:
            raise ConfigError(f"{path}: empty file")
        header = lines[0].decode("utf-8-sig", errors="replace").rstrip("\r")
        columns = [c.strip() for c in labelled_text.split_line(header, fmt)]
        needed = [text_column, label_column] + (
            [text_b_column] if text_b_column else []
        )
        for name in needed:
            if name not in columns:
                raise ConfigError(
                    f"{path}: column {name!r} is not in the header "
                    f"(columns: {', '.join(columns)})"
                )
        first = 1
    rows = LabelledRows(path, [], [] if text_b_column else None, [], [])
    for number, line in enumerate(lines[first:], start=first + 1):
        status, value = labelled_text.parse_row(
            line,
            fmt=fmt,
            columns=columns,
            text_column=text_column,
            text_b_column=text_b_column,
            label_column=label_column,
        )
        if status == "ok":
            rows.texts_a.append(value[0])
            if text_b_column:
                rows.texts_b.append(value[1])
            rows.labels.append(value[2])
        elif status == "blank":
            rows.blank += 1
        else:
            rows.bad.append(
                {
                    "line_number": number,
                    "reason": value,
                    "line": line.decode("utf-8", errors="backslashreplace"),
                }
            )
    return rows


def write_dead_letter(path: str, bad: list) -> None:
    """Writes bad-row dicts as JSON lines (an empty file when there are none)."""
    with tf.io.gfile.GFile(path, "w") as f:
        for row in bad:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


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
    return tf.io.gfile.isdir(path)


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
        for f in tf.io.gfile.glob(os.path.join(data_dir, "*"))
        if ".tfrecord" in os.path.basename(f) or "tf_record" in os.path.basename(f)
    )
    if not files:
        raise ConfigError(f"{data_dir}: no TFRecord files (*.tfrecord*)")
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
