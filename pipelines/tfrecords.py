"""Pretraining `tf.train.Example` bytes, fast: `ExampleEncoder` + `WriteTfRecords`.

Every record has the same seven features with fixed lengths
(google-research/bert's schema, `configs.features`), so its protobuf wire
layout is fixed up to the varint bytes of the ids. `ExampleEncoder` writes
those bytes directly: precomputed key headers, one table lookup per id, a
few joins. The output equals `tf.train.Example(...).SerializeToString(
deterministic=True)` byte for byte (tested), at several times the speed of
building and serializing protos one by one.

Wire format used (protobuf): Example{1: Features{1: repeated map entry
{1: key, 2: Feature{2: FloatList{1: packed float} | 3: Int64List{1:
packed varint}}}}}, map entries in sorted key order.
"""

from __future__ import annotations

import struct

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from configs import features
from pipelines import text

NAMESPACE = "WriteTfRecords"
RECORDS_WRITTEN = "records-written"
SHARD_PREFIX = "pretraining"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
COMPRESSIONS = ("none", "gzip")

_FLOAT_ONE = struct.pack("<f", 1.0)
_FLOAT_ZERO = struct.pack("<f", 0.0)


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: tag byte, varint length, payload."""
    return bytes([tag]) + varint(len(payload)) + payload


def shard_suffix(compression: str) -> str:
    return ".tfrecord.gz" if compression == "gzip" else ".tfrecord"


class ExampleEncoder:
    """Encodes masked instances as serialized `tf.train.Example`s.

    Args:
        max_seq_length: length of `input_ids`/`input_mask`/`segment_ids`.
        max_predictions_per_seq: length of the `masked_lm_*` features.
        vocab_size: ids are below this (sizes the varint table).

    `encode(input_ids, num_a, label, positions, original_ids)` takes the
    unpadded ids (`len(input_ids) <= max_seq_length`), the length of
    `[CLS] A [SEP]` (segment 0), the sentence label and the sorted masked
    positions with their original ids (at most `max_predictions_per_seq`).
    Features whose bytes depend only on lengths (`input_mask`,
    `segment_ids`, `masked_lm_weights`, `next_sentence_labels`) come from
    tables built here; only the three id lists are encoded per record.
    """

    def __init__(
        self, max_seq_length: int, max_predictions_per_seq: int, vocab_size: int
    ):
        seq = self.max_seq_length = max_seq_length
        pred = self.max_predictions_per_seq = max_predictions_per_seq
        self._varints = [varint(i) for i in range(max(vocab_size, seq) + 1)]
        f = features
        self._mask = [
            _int_entry(f.INPUT_MASK, b"\x01" * n + b"\x00" * (seq - n))
            for n in range(seq + 1)
        ]
        # segment_ids payload: num_a zeros, then ones up to n, then padding.
        self._segment_header = _int_header(f.SEGMENT_IDS, seq)
        self._weights = [
            _entry(
                f.MASKED_LM_WEIGHTS,
                _field(0x12, _field(0x0A, _FLOAT_ONE * m + _FLOAT_ZERO * (pred - m))),
            )
            for m in range(pred + 1)
        ]
        self._labels = [
            _int_entry(f.NEXT_SENTENCE_LABELS, varint(label)) for label in (0, 1)
        ]
        self._key_prefix = {
            name: b"\x0a" + varint(len(name)) + name.encode() + b"\x12"
            for name in (f.INPUT_IDS, f.MASKED_LM_POSITIONS, f.MASKED_LM_IDS)
        }

    def _ids_entry(self, name: str, packed: bytes) -> bytes:
        int64_list = b"\x0a" + varint(len(packed)) + packed
        feature = b"\x1a" + varint(len(int64_list)) + int64_list
        entry = self._key_prefix[name] + varint(len(feature)) + feature
        return b"\x0a" + varint(len(entry)) + entry

    def encode(self, input_ids, num_a, label, positions, original_ids) -> bytes:
        seq, pred = self.max_seq_length, self.max_predictions_per_seq
        n, m = len(input_ids), len(positions)
        if n > seq or m > pred or not 0 <= num_a <= n:
            raise ValueError(f"instance of {n} tokens/{m} predictions is too long")
        v = self._varints
        pad_pred = b"\x00" * (pred - m)
        f = features
        # Entries in sorted key order, as SerializeToString(deterministic).
        body = b"".join(
            (
                self._ids_entry(
                    f.INPUT_IDS,
                    b"".join([v[i] for i in input_ids]) + b"\x00" * (seq - n),
                ),
                self._mask[n],
                self._ids_entry(
                    f.MASKED_LM_IDS, b"".join([v[i] for i in original_ids]) + pad_pred
                ),
                self._ids_entry(
                    f.MASKED_LM_POSITIONS,
                    b"".join([v[i] for i in positions]) + pad_pred,
                ),
                self._weights[m],
                self._labels[label],
                self._segment_header,
                b"\x00" * num_a,
                b"\x01" * (n - num_a),
                b"\x00" * (seq - n),
            )
        )
        return b"\x0a" + varint(len(body)) + body


def _entry(name: str, feature: bytes) -> bytes:
    """A Features map entry {1: name, 2: feature}, length-delimited."""
    key = name.encode()
    entry = b"\x0a" + varint(len(key)) + key + _field(0x12, feature)
    return _field(0x0A, entry)


def _int_entry(name: str, packed: bytes) -> bytes:
    return _entry(name, _field(0x1A, _field(0x0A, packed)))


def _int_header(name: str, payload_len: int) -> bytes:
    """The bytes of `_int_entry(name, payload)` before a payload of a fixed
    length (single-byte varints: 0/1 values)."""
    return _int_entry(name, b"\x00" * payload_len)[:-payload_len]


def example_features(input_ids, num_a, label, positions, original_ids, seq, pred):
    """The same record as plain padded lists: {feature name: list}.

    The slow reference for `ExampleEncoder` and for readers/tests.
    """
    n, m = len(input_ids), len(positions)
    return {
        features.INPUT_IDS: list(input_ids) + [0] * (seq - n),
        features.INPUT_MASK: [1] * n + [0] * (seq - n),
        features.SEGMENT_IDS: [0] * num_a + [1] * (n - num_a) + [0] * (seq - n),
        features.MASKED_LM_POSITIONS: list(positions) + [0] * (pred - m),
        features.MASKED_LM_IDS: list(original_ids) + [0] * (pred - m),
        features.MASKED_LM_WEIGHTS: [1.0] * m + [0.0] * (pred - m),
        features.NEXT_SENTENCE_LABELS: [label],
    }


class _EncodeFn(beam.DoFn):
    def __init__(self, max_seq_length, max_predictions_per_seq, vocab_size):
        self._args = (max_seq_length, max_predictions_per_seq, vocab_size)

    def setup(self):
        self._encoder = ExampleEncoder(*self._args)
        self._count = text.counter_fn(NAMESPACE)

    def process(self, instance):
        self._count(RECORDS_WRITTEN)
        yield self._encoder.encode(
            instance.input_ids,
            instance.num_a,
            instance.label,
            instance.positions,
            instance.original_ids,
        )


class WriteTfRecords(beam.PTransform):
    """Encodes masked instances and writes sharded TFRecord files.

    Input: `masking.MaskedInstance`. Output: the PCollection of written file
    names (`OUTPUT_DIR/pretraining-SSSSS-of-NNNNN.tfrecord[.gz]`).

    `WriteToTFRecord` with a fixed `num_shards` keys records round-robin to
    shards and groups by shard, so the instances of one document (which
    arrive one after another) land in different shards; no extra Reshuffle
    is needed for that (it would cost a second full shuffle).
    """

    def __init__(
        self,
        *,
        output_dir: str,
        max_seq_length: int,
        max_predictions_per_seq: int,
        vocab_size: int,
        num_shards: int,
        compression: str = "none",
    ):
        super().__init__()
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}")
        if num_shards < 1:
            raise ValueError("num_shards must be at least 1")
        self._output_dir = output_dir
        self._encode = _EncodeFn(max_seq_length, max_predictions_per_seq, vocab_size)
        self._num_shards = num_shards
        self._compression = compression

    def expand(self, instances):
        compression = (
            CompressionTypes.GZIP
            if self._compression == "gzip"
            else CompressionTypes.UNCOMPRESSED
        )
        return (
            instances
            | "EncodeExamples" >> beam.ParDo(self._encode)
            | "WriteShards"
            >> beam.io.WriteToTFRecord(
                FileSystems.join(self._output_dir, SHARD_PREFIX),
                file_name_suffix=shard_suffix(self._compression),
                num_shards=self._num_shards,
                shard_name_template=SHARD_TEMPLATE,
                compression_type=compression,
            )
        )
