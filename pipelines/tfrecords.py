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

import shutil
import struct
import uuid
import zlib

import numpy as np

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from configs import features, records
from pipelines import text

NAMESPACE = "WriteTfRecords"
RECORDS_WRITTEN = "records-written"
SHARD_PREFIX = features.PRETRAINING_SHARD_PREFIX
TEMP_PREFIX = ".temp-pieces-"
_COPY_BYTES = 8 << 20
COMPRESSIONS = ("none", "gzip")

_FLOAT_ONE = struct.pack("<f", 1.0)
_FLOAT_ZERO = struct.pack("<f", 0.0)


# The scalar proto encoders are shared with the TF-free reader/writers.
varint = records.varint
_field = records.proto_field


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
        # Ids and (payload) lengths up to this bound come from a table.
        bound = max(vocab_size, 16 * (seq + pred) + 256)
        self._varints = [varint(i) for i in range(bound + 1)]
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
        self._headers: dict = {}
        self._key_prefix = {
            name: b"\x0a" + varint(len(name)) + name.encode() + b"\x12"
            for name in (f.INPUT_IDS, f.MASKED_LM_POSITIONS, f.MASKED_LM_IDS)
        }

    def _ids_entry(self, name: str, packed: bytes) -> bytes:
        v = self._varints  # lengths are far below the table's size
        int64_list = b"\x0a" + v[len(packed)] + packed
        feature = b"\x1a" + v[len(int64_list)] + int64_list
        entry = self._key_prefix[name] + v[len(feature)] + feature
        return b"\x0a" + v[len(entry)] + entry

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

    def _header(self, name: str, payload_len: int) -> bytes:
        """Bytes of `_ids_entry(name, payload)` before the payload, cached
        per payload length (a few hundred distinct lengths at most)."""
        key = (name, payload_len)
        header = self._headers.get(key)
        if header is None:
            header = self._ids_entry(name, b"\x00" * payload_len)[:-payload_len]
            self._headers[key] = header
        return header

    def encode_batch(self, batch) -> list[bytes]:
        """Serialized records of a `masking.MaskedBatch` (padded arrays).

        Same bytes as `encode` per row; the varints of the three id
        features are computed for the whole batch with numpy and the
        length-dependent headers come from caches.
        """
        f = features
        ids, ids_at = varint_rows(batch.input_ids[:, : self.max_seq_length])
        orig, orig_at = varint_rows(batch.original_ids)
        pos, pos_at = varint_rows(batch.positions)
        seq = self.max_seq_length
        header, v = self._header, self._varints
        mask, weights, labels = self._mask, self._weights, self._labels
        segment_header = self._segment_header
        out = []
        rows = zip(
            batch.lengths.tolist(),
            batch.num_a.tolist(),
            batch.labels.tolist(),
            batch.num_masked.tolist(),
            zip(ids_at, ids_at[1:]),
            zip(orig_at, orig_at[1:]),
            zip(pos_at, pos_at[1:]),
        )
        for n, num_a, label, m, (i0, i1), (o0, o1), (p0, p1) in rows:
            body = b"".join(
                (
                    header(f.INPUT_IDS, i1 - i0),
                    ids[i0:i1],
                    mask[n],
                    header(f.MASKED_LM_IDS, o1 - o0),
                    orig[o0:o1],
                    header(f.MASKED_LM_POSITIONS, p1 - p0),
                    pos[p0:p1],
                    weights[m],
                    labels[label],
                    segment_header,
                    b"\x00" * num_a,
                    b"\x01" * (n - num_a),
                    b"\x00" * (seq - n),
                )
            )
            out.append(b"\x0a" + v[len(body)] + body)
        return out


def _varint_table(bits: int = 16):
    """Varint bytes of every value below `2**bits`: three uint8 columns
    (byte 0, 1, 2; unused bytes zero) and each value's width in bytes."""
    v = np.arange(1 << bits, dtype=np.uint32)
    width = 1 + (v >= 1 << 7) + (v >= 1 << 14)
    columns = [
        (((v >> (7 * k)) & 0x7F) | ((width > k + 1) << 7)).astype(np.uint8)
        for k in range(3)
    ]
    return columns, width.astype(np.int64)


_VARINT_COLUMNS, _VARINT_WIDTH = _varint_table()


def varint_rows(values: np.ndarray) -> tuple[bytes, list[int]]:
    """Packed varints of each row of a non-negative int array `[n, k]`
    (values < 2**28): all rows' bytes back to back, and row offsets
    (`n + 1` of them). Values below 2**16 (every id of a BERT vocab) take
    a table lookup; larger ones the arithmetic path."""
    v = np.asarray(values)
    n = v.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    if v.size == 0:
        return b"", offsets.tolist()
    if v.max() < len(_VARINT_WIDTH):
        # Scatter each value's bytes at its start offset: byte 0 always,
        # byte 1 for values of width >= 2, byte 2 for width 3.
        flat = v.ravel()
        width = _VARINT_WIDTH[flat]
        ends = np.cumsum(width)
        starts = ends - width
        out = np.empty(int(ends[-1]), np.uint8)
        b0, b1, b2 = _VARINT_COLUMNS
        out[starts] = b0[flat]
        two = width >= 2
        out[starts[two] + 1] = b1[flat[two]]
        three = width == 3
        if three.any():
            out[starts[three] + 2] = b2[flat[three]]
        offsets[1:] = ends[v.shape[1] - 1 :: v.shape[1]]
        return out.tobytes(), offsets.tolist()
    v = v.astype(np.uint32)
    width = 1 + (v >= 1 << 7) + (v >= 1 << 14) + (v >= 1 << 21)
    groups = np.stack([(v >> s) & 0x7F for s in (0, 7, 14, 21)], axis=-1)
    more = np.arange(4) < (width[..., None] - 1)  # continuation bit
    groups = (groups | (more << 7)).astype(np.uint8)
    keep = np.arange(4) < width[..., None]
    np.cumsum(width.sum(axis=1), out=offsets[1:])
    return groups[keep].tobytes(), offsets.tolist()


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


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord frame: length, masked CRC32C of it, data, masked CRC32C."""
    n = len(record)
    header = _FRAME_HEADERS.get(n)
    if header is None:  # length + its CRC: a few hundred distinct lengths
        length = struct.pack("<Q", n)
        header = length + struct.pack("<I", _TFRecordUtil._masked_crc32c(length))
        _FRAME_HEADERS[n] = header
    return b"".join(
        (header, record, struct.pack("<I", _TFRecordUtil._masked_crc32c(record)))
    )


_FRAME_HEADERS: dict = {}


# Test-only fault injection: when this environment variable names a file
# that does not exist yet, the first piece-writer bundle to finish creates
# it and fails after writing its pieces, so the runner must retry that
# bundle (tests/pipelines/test_runners.py). Unset in every real run.
FAIL_ONCE_ENV = "PIPELINES_TEST_FAIL_ONCE"


class _WritePiecesFn(beam.DoFn):
    """`MaskedBatch` -> `(shard, piece path)`: records dealt over shards.

    Each record is TFRecord-framed and dealt round-robin over the
    `num_shards` shards (starting at a shard chosen by the batch's first
    record's CRC, so the same input always fills the same shards), into
    per-shard buffers of this bundle. When the buffers reach `flush_bytes`
    (and at the end of the bundle) each non-empty buffer becomes one
    write-once piece file under `temp_dir`. Records therefore never pass
    through a shuffle: a runner that holds shuffled data in memory (Beam's
    local runners) holds none of them, and memory is `flush_bytes` per
    bundle whatever the corpus size. A retried bundle writes new pieces;
    only the pieces it reported are used.
    """

    def __init__(self, temp_dir, num_shards, encoder_args, flush_bytes):
        self._temp_dir = temp_dir
        self._num_shards = num_shards
        self._args = encoder_args
        self._flush_bytes = flush_bytes

    def setup(self):
        self._encoder = ExampleEncoder(*self._args)
        self._count = text.counter_fn(NAMESPACE)

    def start_bundle(self):
        self._buffers = [bytearray() for _ in range(self._num_shards)]
        self._buffered = 0

    def process(self, batch):
        records = self._encoder.encode_batch(batch)
        if not records:
            return
        self._count(RECORDS_WRITTEN, len(records))
        k = self._num_shards
        frames = list(map(tfrecord_frame, records))
        first = zlib.crc32(records[0]) % k
        for j in range(min(k, len(frames))):
            piece = b"".join(frames[j::k])
            self._buffers[(first + j) % k] += piece
            self._buffered += len(piece)
        if self._buffered >= self._flush_bytes:
            yield from self._flush()

    def finish_bundle(self):
        pieces = self._flush()
        text.fail_once_for_test(FAIL_ONCE_ENV)  # after the pieces exist: a real retry
        for shard_and_path in pieces:
            yield WindowedValue(shard_and_path, MIN_TIMESTAMP, [GlobalWindow()])

    def _flush(self):
        pieces = []
        for shard, buffer in enumerate(self._buffers):
            if buffer:
                path = FileSystems.join(
                    self._temp_dir, f"{shard:05d}-{uuid.uuid4().hex}.piece"
                )
                with FileSystems.create(
                    path, compression_type=CompressionTypes.UNCOMPRESSED
                ) as f:
                    f.write(buffer)
                pieces.append((shard, path))
        self._buffers = [bytearray() for _ in range(self._num_shards)]
        self._buffered = 0
        return pieces


class _ConcatenateShardFn(beam.DoFn):
    """`(shard, [piece path | None, ...])` -> the final shard's path.

    Concatenates the shard's pieces (TFRecord frames concatenate) into a
    temporary file beside them in `temp_dir`, compressing here when asked,
    then renames it to `PREFIX-SSSSS-of-NNNNN.tfrecord[.gz]`: a job killed
    mid-copy leaves a cut file only under the temporary name, never under
    the final one. The shard's pieces are deleted right after the rename,
    so the disk holds the records about once, not twice. A retried (or
    duplicate) attempt that finds pieces gone while the final shard exists
    knows an earlier attempt completed it, and reports it.
    """

    def __init__(self, prefix, num_shards, compression, temp_dir):
        self._prefix = prefix
        self._num_shards = num_shards
        self._compression = compression
        self._temp_dir = temp_dir

    def process(self, element):
        shard, paths = element
        paths = sorted(p for p in paths if p)
        final = (
            f"{self._prefix}-{shard:05d}-of-{self._num_shards:05d}"
            f"{shard_suffix(self._compression)}"
        )
        temp = FileSystems.join(
            self._temp_dir, f"shard-{uuid.uuid4().hex}-{final.rsplit('/', 1)[-1]}"
        )
        compression = (
            CompressionTypes.GZIP
            if self._compression == "gzip"
            else CompressionTypes.UNCOMPRESSED
        )
        try:
            with FileSystems.create(temp, compression_type=compression) as out:
                for path in paths:
                    with FileSystems.open(
                        path, compression_type=CompressionTypes.UNCOMPRESSED
                    ) as f:
                        shutil.copyfileobj(f, out, _COPY_BYTES)
        except (OSError, BeamIOError):
            # Pieces are deleted only after their shard was renamed into
            # place: a missing piece with the final shard present means
            # another attempt finished this shard.
            if FileSystems.exists(temp):
                FileSystems.delete([temp])
            if paths and FileSystems.exists(final):
                yield final
                return
            raise
        _test_stall(STALL_BEFORE_RENAME_ENV)
        FileSystems.rename([temp], [final])
        if paths:
            FileSystems.delete(paths)
        yield final


# Test-only fault injection: when this environment variable names a file,
# the shard writer creates that file after writing a temporary shard and
# before renaming it, then waits, so a test can kill the job at that exact
# point (tests/test_faults.py). Unset in every real run.
STALL_BEFORE_RENAME_ENV = "PIPELINES_TEST_STALL_BEFORE_RENAME"


def _test_stall(variable: str) -> None:
    import os
    import time

    marker = os.environ.get(variable)
    if marker:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)


class CutRecordError(ValueError):
    """A TFRecord file that ends inside a record or fails its checksum."""


def count_records(path: str, compression: str = "none") -> int:
    """Counts the TFRecord frames of one shard, checking each frame's length
    CRC and that the file ends on a frame boundary (no TensorFlow).

    Raises:
        CutRecordError: one line naming the file and the byte offset of the
            first bad frame (a shard cut short by a killed writer).
    """
    compression_type = (
        CompressionTypes.GZIP
        if compression == "gzip"
        else CompressionTypes.UNCOMPRESSED
    )
    count = offset = 0
    try:
        with FileSystems.open(path, compression_type=compression_type) as f:
            while True:
                header = f.read(12)
                if not header:
                    return count
                if len(header) < 12:
                    break
                (length,) = struct.unpack("<Q", header[:8])
                (crc,) = struct.unpack("<I", header[8:])
                if crc != _TFRecordUtil._masked_crc32c(header[:8]):
                    raise CutRecordError(
                        f"{path}: corrupt record at byte {offset} (bad length checksum)"
                    )
                body = f.read(length + 4)
                if len(body) < length + 4:
                    break
                count += 1
                offset += 16 + length
    except (EOFError, OSError, zlib.error) as e:
        raise CutRecordError(f"{path}: unreadable at record {count} ({e})") from None
    raise CutRecordError(
        f"{path}: cut short inside record {count} (byte {offset}); the job that "
        "wrote it was interrupted"
    )


def _delete_temp_dir(temp_dir: str, finals: list) -> list:
    """Once every shard is written, removes what is left in `temp_dir`
    (spill files, pieces of failed attempts) and the directory; returns the
    shards."""
    pieces = FileSystems.match([FileSystems.join(temp_dir, "*")])[0].metadata_list
    if pieces:
        FileSystems.delete([m.path for m in pieces])
    if FileSystems.exists(temp_dir):  # a directory on local disks only
        FileSystems.delete([temp_dir])
    return sorted(finals)


def new_temp_dir(output_dir: str) -> str:
    """A fresh temporary directory name for one run's pieces."""
    return FileSystems.join(output_dir, f"{TEMP_PREFIX}{uuid.uuid4().hex}")


def temp_dir_pattern(output_dir: str) -> str:
    """Where interrupted runs may have left pieces (every run clears them)."""
    return FileSystems.join(output_dir, f"{TEMP_PREFIX}*")


class WriteTfRecords(beam.PTransform):
    """Encodes masked instances and writes sharded TFRecord files.

    Input: `masking.MaskedBatch`. Output: the PCollection of written file
    names (`OUTPUT_DIR/pretraining-SSSSS-of-NNNNN.tfrecord[.gz]`, exactly
    `num_shards` of them, empty ones included).

    A batch's records are dealt record by record over the shards
    (`_WritePiecesFn`), so no shard holds a document's instances together.
    Only piece *names* are grouped (one small GroupByKey), then each shard's
    pieces are concatenated: the records never go through a shuffle. That
    keeps Beam's local runners' memory flat in the corpus size (they hold
    a whole shuffle in memory) and saves the encode/decode of every record
    through the shuffle on every runner.

    `temp_dir` (default: a fresh `OUTPUT_DIR/.temp-pieces-<uuid>`) holds
    the pieces; the whole directory, with anything earlier stages of the
    run spilled there, is deleted once every shard is written.
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
        flush_bytes: int = 32 << 20,
        temp_dir: str | None = None,
    ):
        super().__init__()
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}")
        if num_shards < 1:
            raise ValueError("num_shards must be at least 1")
        self._output_dir = output_dir
        self._encoder_args = (max_seq_length, max_predictions_per_seq, vocab_size)
        self._num_shards = num_shards
        self._compression = compression
        self._flush_bytes = flush_bytes
        self._temp_dir = temp_dir

    def expand(self, batches):
        temp_dir = self._temp_dir or new_temp_dir(self._output_dir)
        n = self._num_shards
        pieces = batches | "WritePieces" >> beam.ParDo(
            _WritePiecesFn(temp_dir, n, self._encoder_args, self._flush_bytes)
        )
        # Every shard gets a key, so shards without records are still written.
        every_shard = batches.pipeline | "ShardKeys" >> beam.Create(
            [(s, None) for s in range(n)]
        )
        finals = (
            (pieces, every_shard)
            | "AllPieces" >> beam.Flatten()
            | "GroupPieces" >> beam.GroupByKey()
            | "Concatenate"
            >> beam.ParDo(
                _ConcatenateShardFn(
                    FileSystems.join(self._output_dir, SHARD_PREFIX),
                    n,
                    self._compression,
                    temp_dir,
                )
            )
        )
        return (
            finals
            | "AllShards" >> beam.combiners.ToList()
            | "DeletePieces" >> beam.FlatMap(lambda fs: _delete_temp_dir(temp_dir, fs))
        )
