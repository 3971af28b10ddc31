"""TFRecord files of pretraining `tf.train.Example`s, read without TensorFlow.

The JAX trainer runs where TensorFlow is not installed, so it reads the
records with this module: numpy, the standard library, and `google-crc32c`
when it is installed (a binary wheel on every common platform; it comes
with `apache-beam[gcp]`), else a numpy CRC32C.

Three layers, each usable alone:

- Framing (`iter_record_blocks`, `iter_records`, `read_first_record`,
  `count_records`): a TFRecord file is a run of frames `uint64 length |
  uint32 masked CRC32C of the length | data | uint32 masked CRC32C of the
  data` (little endian). Both CRCs are checked; a frame cut short, a CRC
  mismatch, gzip bytes in a file not named `*.gz` and a `*.gz` that is not
  gzip (or is cut short) all raise `RecordError`, a ValueError whose
  message starts with the file name. Files named `*.gz` are gunzipped on
  the fly (as TensorFlow's `compression_type="GZIP"`, which the data job's
  `--compression=gzip` writes).
- Decoding (`decode_pretraining_batch`): a list of serialized Examples ->
  a dict of numpy arrays with the tf.data path's keys, dtypes and shapes.
  The schema is fixed (`configs.features`), so the protobuf wire format is
  walked for the whole batch at once with numpy: the batch is checked
  against its first record's layout in one pass (a vectorized step per map
  entry; a general walker takes batches laid out otherwise), then each
  int64 list is varint-decoded for all records at once. Packed lists (what
  `tf.train.Example.SerializeToString` and our writer emit) and unpacked
  ones (legal protobuf, emitted by some writers) are both read; map
  entries may come in any order; unknown features are skipped.
- `parse_example`: a plain-Python parser of one Example of any schema
  (every feature, any kind), for first-record checks and errors.
  `decode_pretraining_batch_protobuf` is the measured alternative (the
  `protobuf` package's upb parser, an Example descriptor built at
  runtime): about 5x slower than the numpy decoder on one core, kept as
  the independent reference the tests compare with
  (`benchmarks/record_reader.py` measures both).
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterator

import numpy as np

from configs import features

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_CHUNK_BYTES = 1 << 20
_MAX_RECORD_BYTES = 1 << 30  # a length past this is a corrupt frame

# Protobuf tags (field number << 3 | wire type) of the Example schema.
_LEN_FIELD_1 = 0x0A  # Example.features, Features.feature entry, entry key,
# packed list payload
_ENTRY_VALUE = 0x12  # map entry value (Feature)
_BYTES_LIST = 0x0A
_FLOAT_LIST = 0x12
_INT64_LIST = 0x1A
_VARINT_FIELD_1 = 0x08  # an unpacked int64 value
_FIXED32_FIELD_1 = 0x0D  # an unpacked float value


class RecordError(ValueError):
    """A record file that cannot be read as pretraining records.

    The message starts with the file's path (one line, for the user).
    """

    def __init__(self, path, message):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# === CRC32C ===
try:
    import google_crc32c as _google_crc32c

    _FAST_CRC = _google_crc32c.implementation == "c"
except ImportError:  # pragma: no cover - depends on the environment
    _google_crc32c = None
    _FAST_CRC = False


def _crc32c_table():
    poly = np.uint32(0x82F63B78)  # CRC32C (Castagnoli), reflected
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ poly, table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc32c_table()


_WORD_TABLES = None


def _word_tables():
    """Two 65,536-entry tables that advance a CRC32C register by one 4-byte
    word: register' = A[x & 0xFFFF] ^ B[x >> 16], x = register ^ word (the
    four byte steps are linear in x). Built on first use (a few ms)."""
    global _WORD_TABLES
    if _WORD_TABLES is None:
        low = np.arange(1 << 16, dtype=np.uint32)
        tables = []
        for reg in (low, low << np.uint32(16)):
            for _ in range(4):
                reg = _CRC_TABLE[reg & 0xFF] ^ (reg >> np.uint32(8))
            tables.append(reg)
        _WORD_TABLES = tuple(tables)
    return _WORD_TABLES


def crc32c_many(records: list[bytes]) -> np.ndarray:
    """CRC32C of each record, numpy only (uint32 array).

    The fallback without `google-crc32c`: one step per 4-byte column,
    vectorized across the records. A reflected CRC with initial value ~0
    equals one with initial value 0 over the message whose first four bytes
    are complemented, and zero bytes before the message keep a zero register
    at zero; so the records are right-aligned in one zero-padded matrix,
    their first four bytes complemented, and all run from register 0.
    """
    n = len(records)
    if n == 0:
        return np.zeros(0, np.uint32)
    lengths = np.fromiter(map(len, records), np.int64, n)
    if lengths.min() < 4:  # the algebra below needs four bytes
        return np.array([_crc32c_bytewise(r) for r in records], np.uint32)
    width = -(-int(lengths.max()) // 4) * 4
    zeros = bytes(width)
    padded = b"".join([zeros[: width - len(r)] + r for r in records])
    matrix = np.frombuffer(padded, np.uint8).reshape(n, width).copy()
    # Complement the first four bytes of each record.
    first = (width - lengths)[:, None] + np.arange(4)
    matrix[np.arange(n)[:, None], first] ^= 0xFF
    words = matrix.view("<u4")
    low, high = _word_tables()
    reg = np.zeros(n, np.uint32)
    for col in words[:, int((width - lengths.max()) // 4) :].T:
        x = reg ^ col
        reg = low[x & 0xFFFF] ^ high[x >> np.uint32(16)]
    return reg ^ np.uint32(0xFFFFFFFF)


def _crc32c_bytewise(data: bytes) -> int:
    reg = 0xFFFFFFFF
    table = _CRC_TABLE.tolist()
    for byte in data:
        reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli) of `data`."""
    if _google_crc32c is not None and _FAST_CRC:
        return _google_crc32c.value(data)
    return int(crc32c_many([bytes(data)])[0])


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _mask(crcs: np.ndarray) -> np.ndarray:
    crcs = crcs.astype(np.uint32)
    rotated = (crcs >> np.uint32(15)) | (crcs << np.uint32(17))
    return (rotated.astype(np.uint64) + 0xA282EAD8).astype(np.uint32)


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (writers without TF)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def proto_field(tag: int, payload: bytes) -> bytes:
    """A length-delimited proto field: tag byte (field << 3 | 2), varint
    length, payload."""
    return bytes([tag]) + varint(len(payload)) + payload


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord frame of `record` (for tests and writers without TF)."""
    length = struct.pack("<Q", len(record))
    return b"".join(
        (
            length,
            struct.pack("<I", masked_crc32c(length)),
            record,
            struct.pack("<I", masked_crc32c(record)),
        )
    )


# === Framing ===
def is_gzip_name(path: str) -> bool:
    return str(path).endswith(".gz")


def _open(path):
    from configs import fileio  # TensorFlow only for remote paths

    return fileio.open_file(path, "rb")


def _chunks(path, chunk_bytes):
    """Raw bytes of `path` in chunks, gunzipped when it is named `*.gz`."""
    gz = is_gzip_name(path)
    with _open(path) as f:
        first = f.read(chunk_bytes)
        if not first:
            return
        magic = first[:2]
        if gz and magic != _GZIP_MAGIC:
            raise RecordError(path, "named *.gz but is not gzip-compressed")
        if not gz and magic == _GZIP_MAGIC:
            raise RecordError(
                path,
                "is gzip-compressed but not named *.gz (rename it to *.gz, "
                "or write records with --compression=none)",
            )
        if not gz:
            yield first
            while chunk := f.read(chunk_bytes):
                yield chunk
            return
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        raw = first
        try:
            while raw:
                while raw:
                    out = inflater.decompress(raw)
                    if out:
                        yield out
                    if inflater.eof and inflater.unused_data:
                        # Another gzip member follows (concatenated files).
                        raw = inflater.unused_data
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    else:
                        raw = b""
                raw = f.read(chunk_bytes)
            tail = inflater.flush()
        except zlib.error as e:
            raise RecordError(path, f"corrupt gzip data ({e})") from None
        if tail:
            yield tail
        if not inflater.eof:
            raise RecordError(path, "gzip data ends early (file cut short?)")


def iter_record_blocks(
    path: str,
    *,
    check_crc: bool | str = True,
    chunk_bytes: int = _CHUNK_BYTES,
) -> Iterator[list[bytes]]:
    """Yields the records of one TFRecord file, a list per chunk read.

    Args:
        path: local or remote (`scheme://`, via tf.io.gfile) file; `*.gz`
            files are gunzipped.
        check_crc: verify both masked CRC32Cs of every frame (True: with
            google-crc32c where installed, else numpy; "numpy": always the
            numpy fallback, `crc32c_many`).
        chunk_bytes: bytes read (or inflated) at a time.

    Raises:
        RecordError: a frame cut short, a CRC mismatch, or a compression
            that does not match the file name; the message names `path`.
    """
    buf = b""
    pos = 0
    done = 0  # records of earlier chunks
    headers = {}  # valid 12-byte frame headers -> record length
    for chunk in _chunks(path, chunk_bytes):
        buf = buf[pos:] + chunk if pos < len(buf) else chunk
        pos = 0
        end_of_buf = len(buf)
        block = []
        offsets = []
        while pos + 12 <= end_of_buf:
            header = buf[pos : pos + 12]
            length = headers.get(header)
            if length is None:
                length, length_crc = _HEADER.unpack(header)
                if check_crc and masked_crc32c(header[:8]) != length_crc:
                    raise RecordError(
                        path,
                        f"corrupt record {done + len(block)}: CRC of the length "
                        "does not match (not a TFRecord file, or damaged)",
                    )
                if length > _MAX_RECORD_BYTES:
                    raise RecordError(path, f"record length {length} is corrupt")
                if len(headers) < 4096:
                    headers[header] = length
            end = pos + 12 + length
            if end + 4 > end_of_buf:
                break
            offsets.append(end)
            block.append(buf[pos + 12 : end])
            pos = end + 4
        if block and check_crc:
            bad = _first_bad_data_crc(buf, block, offsets, check_crc != "numpy")
            if bad is not None:
                raise RecordError(
                    path, f"corrupt record {done + bad}: data CRC does not match"
                )
        if block:
            done += len(block)
            yield block
    if pos < len(buf):
        raise RecordError(
            path,
            f"ends with a cut-short record ({len(buf) - pos} stray bytes); "
            "the file is truncated (an interrupted write?)",
        )


def _first_bad_data_crc(buf, block, offsets, use_google=True):
    """Index in `block` of the first record whose data CRC is wrong, or None."""
    if _FAST_CRC and use_google:
        value = _google_crc32c.value
        unpack = _CRC.unpack_from
        for i, (record, end) in enumerate(zip(block, offsets)):
            crc = value(record)
            if (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF != unpack(
                buf, end
            )[0]:
                return i
        return None
    want = np.array([_CRC.unpack_from(buf, end)[0] for end in offsets], np.uint32)
    wrong = np.flatnonzero(_mask(crc32c_many(block)) != want)
    return int(wrong[0]) if len(wrong) else None


def iter_records(path: str, *, check_crc: bool | str = True) -> Iterator[bytes]:
    """Yields each record (serialized Example) of one TFRecord file."""
    for block in iter_record_blocks(path, check_crc=check_crc):
        yield from block


def read_first_record(path: str) -> bytes | None:
    """The first record of `path`, or None when the file holds no records.

    Reads one small chunk (the whole file only if its first record is that
    long); checks the frame's CRCs and the compression as `iter_records`.
    """
    for block in iter_record_blocks(path, chunk_bytes=64 << 10):
        return block[0]
    return None


def count_records(path: str) -> int:
    """Walks the frame headers of a local uncompressed TFRecord file.

    Checks every frame's length CRC and that the file ends exactly at a
    frame boundary (no cut-short last record), without reading the
    records' data (about a microsecond per record). Returns the number of
    records.

    Raises:
        RecordError: a length CRC mismatch or a cut-short file, naming it.
        ValueError: a remote or `*.gz` path (they are read, not walked).
    """
    import mmap
    import os

    if "://" in str(path) or is_gzip_name(path):
        raise ValueError(f"{path}: only local uncompressed files are walked")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            headers = {}
            pos = count = 0
            while pos + 12 <= size:
                header = m[pos : pos + 12]
                length = headers.get(header)
                if length is None:
                    length, length_crc = _HEADER.unpack(header)
                    if masked_crc32c(header[:8]) != length_crc:
                        raise RecordError(
                            path,
                            f"corrupt record {count}: CRC of the length does not "
                            "match (not a TFRecord file, or damaged)",
                        )
                    if len(headers) < 4096:
                        headers[header] = length
                pos += 16 + length
                count += 1
    if pos != size:
        whole = count - 1 if pos > size else count
        raise RecordError(
            path,
            f"ends with a cut-short record after {whole} whole record(s); "
            "the file is truncated (an interrupted write?)",
        )
    return count


# === One Example, plain Python (any schema) ===
def _varint(data, pos):
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def _fields(data, start, end):
    """(field number, wire type, value or (payload start, end)) of a message."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("length-delimited field runs past its message")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32 field")
            yield number, wire, data[pos : pos + 4]
            pos += 4
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64 field")
            yield number, wire, data[pos : pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != end:
        raise ValueError("message runs past its end")


def _signed64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_example(record: bytes) -> dict[str, tuple[str, list]]:
    """{feature name: (kind, values)} of one serialized `tf.train.Example`.

    kind is "int64", "float32" or "bytes". Slow (plain Python) but general:
    any features, packed or unpacked lists, entries in any order. Raises
    ValueError on bytes that are not an Example.
    """
    data = bytes(record)
    out = {}
    for number, wire, span in _fields(data, 0, len(data)):
        if number != 1 or wire != 2:
            continue  # Example has only `features` (field 1)
        for number, wire, entry in _fields(data, *span):
            if number != 1 or wire != 2:
                continue
            key, value = "", ("bytes", [])
            for n, w, sub in _fields(data, *entry):
                if n == 1 and w == 2:
                    key = data[sub[0] : sub[1]].decode("utf-8")
                elif n == 2 and w == 2:
                    value = _parse_feature(data, *sub)
            out[key] = value
    return out


def _parse_feature(data, start, end):
    kind, values = "bytes", []
    for number, wire, span in _fields(data, start, end):
        if wire != 2:
            continue
        kind = {1: "bytes", 2: "float32", 3: "int64"}.get(number)
        if kind is None:
            continue
        values = []
        for n, w, v in _fields(data, *span):
            if n != 1:
                continue
            if kind == "bytes" and w == 2:
                values.append(data[v[0] : v[1]])
            elif kind == "int64" and w == 0:
                values.append(_signed64(v))
            elif kind == "int64" and w == 2:
                pos = v[0]
                while pos < v[1]:
                    x, pos = _varint(data, pos)
                    values.append(_signed64(x))
            elif kind == "float32" and w == 5:
                values.append(struct.unpack("<f", v)[0])
            elif kind == "float32" and w == 2:
                count = (v[1] - v[0]) // 4
                values.extend(
                    struct.unpack(f"<{count}f", data[v[0] : v[0] + 4 * count])
                )
    return kind, values


def pretraining_record_lengths(record: bytes, path: str = "") -> tuple[int, int]:
    """(max_seq_length, max_predictions_per_seq) of one pretraining record.

    Raises:
        RecordError: not an Example, or lacking a pretraining feature.
    """
    try:
        feats = parse_example(record)
    except ValueError as e:
        raise RecordError(path, f"not a tf.train.Example ({e})") from None
    missing = [n for n in features.PRETRAINING_FEATURES if n not in feats]
    if missing:
        raise RecordError(
            path, f"records lack pretraining feature(s) {', '.join(missing)}"
        )
    return (
        len(feats[features.INPUT_IDS][1]),
        len(feats[features.MASKED_LM_IDS][1]),
    )


# === A batch of Examples, numpy (the fixed pretraining schema) ===
class _Malformed(Exception):
    """Internal: the batch does not follow the expected layout.

    args: (message, index of the record in the batch or None).
    """


def _varints_at(buf, pos, limit):
    """Reads one varint at each of `pos` (int64 array); vectorized.

    Returns (values int64, positions after). `buf` is padded so that reads
    past a record stay inside it; `limit` (per position) bounds the read.
    """
    last = len(buf) - 1
    b = buf[np.minimum(pos, last)]
    more = b >= 0x80
    if not more.any():
        value = b.astype(np.int64)
        cur = pos + 1
    else:
        value = (b & 0x7F).astype(np.int64)
        cur = pos + 1
        shift = 7
        while more.any():
            if shift > 63:
                raise _Malformed("varint too long", None)
            b = buf[np.minimum(cur, last)]
            value |= np.where(more, (b & 0x7F).astype(np.int64) << shift, 0)
            cur = cur + more
            more &= b >= 0x80
            shift += 7
    if (cur > limit).any():
        raise _Malformed("a length runs past its message", None)
    return value, cur


def _expect(buf, pos, tag, what):
    wrong = buf[np.minimum(pos, len(buf) - 1)] != tag
    if wrong.any():
        raise _Malformed(f"unexpected field where {what} should be", None)


def _feature_spans(buf, starts, ends, names):
    """Where each wanted feature's `Feature` message is, per record.

    One vectorized step per map entry, all records at once (records may
    order their entries differently and hold other features). Returns
    {name: (start, end)} int64 arrays, -1 where a record lacks the feature.
    """
    n = len(starts)
    _expect(buf, starts, _LEN_FIELD_1, "Example.features")
    size, pos = _varints_at(buf, starts + 1, ends)
    if (pos + size != ends).any():
        raise _Malformed("the Example holds more than its features", None)
    by_length = {}
    for name in names:
        by_length.setdefault(len(name), []).append(name)
    name_bytes = {name: np.frombuffer(name.encode(), np.uint8) for name in names}
    found = {
        name: (np.full(n, -1, np.int64), np.full(n, -1, np.int64)) for name in names
    }
    rows = np.arange(n)
    while True:
        active = pos < ends
        if active.all():
            rows_a, p, end = rows, pos, ends
        elif active.any():
            rows_a = rows[active]
            p, end = pos[rows_a], ends[rows_a]
        else:
            break
        _expect(buf, p, _LEN_FIELD_1, "a feature map entry")
        size, p = _varints_at(buf, p + 1, end)
        entry_end = p + size
        if (entry_end > end).any():
            raise _Malformed("a map entry runs past its record", None)
        _expect(buf, p, _LEN_FIELD_1, "a feature name")
        key_len, key_start = _varints_at(buf, p + 1, entry_end)
        p = key_start + key_len
        if (p >= entry_end).any():
            raise _Malformed("a feature name runs past its map entry", None)
        _expect(buf, p, _ENTRY_VALUE, "a feature value")
        size, p = _varints_at(buf, p + 1, entry_end)
        if (p + size != entry_end).any():
            raise _Malformed("a map entry holds more than a name and a value", None)
        first = int(key_len[0])
        if (key_len == first).all():
            groups = [(slice(None), first)] if first in by_length else []
        else:
            groups = [(np.flatnonzero(key_len == k), k) for k in by_length]
        for same, length in groups:
            key = buf[key_start[same, None] + np.arange(length)]
            for name in by_length[length]:
                match = (key == name_bytes[name]).all(axis=1)
                hit = rows_a[same][match]
                found[name][0][hit] = p[same][match]
                found[name][1][hit] = entry_end[same][match]
        pos = pos.copy() if pos is starts else pos
        pos[rows_a] = entry_end
    return found


def _short_varint(buf, pos):
    """A varint of at most two bytes at each of `pos`: (value, after, ok)."""
    last = len(buf) - 1
    b1 = buf[np.minimum(pos, last)].astype(np.int64)
    b2 = buf[np.minimum(pos + 1, last)].astype(np.int64)
    two = b1 >= 0x80
    value = np.where(two, (b1 & 0x7F) | (b2 << 7), b1)
    return value, pos + 1 + two, ~two | (b2 < 0x80)


def _feature_spans_like_first(buf, starts, ends, names):
    """`_feature_spans` for a batch laid out like its first record.

    Writers put the same features in the same order in every record, so
    the layout of record 0 (parsed in Python) is checked for all records at
    once: per map entry, one gathered comparison of the tag, name and value
    tag bytes and two short varints, with no branch per check. Returns None
    when any record differs (or a length needs more than two varint bytes);
    the general walker then takes the batch.
    """
    first = bytes(buf[starts[0] : ends[0]])
    try:
        order = [key for key, _ in _entry_keys(first)]
    except ValueError:
        return None
    if len(set(order)) != len(order):
        return None
    size, pos, ok = _short_varint(buf, starts + 1)
    ok &= (buf[starts] == _LEN_FIELD_1) & (pos + size == ends)
    found = {}
    for key in order:
        entry_size, p, good = _short_varint(buf, pos + 1)
        ok &= good & (buf[pos] == _LEN_FIELD_1)
        entry_end = p + entry_size
        header = np.frombuffer(
            bytes([_LEN_FIELD_1, len(key)]) + key + bytes([_ENTRY_VALUE]), np.uint8
        )
        if len(key) > 0x7F:
            return None
        got = buf[np.minimum(p[:, None] + np.arange(len(header)), len(buf) - 1)]
        ok &= (got == header).all(axis=1)
        value_size, p, good = _short_varint(buf, p + len(header))
        ok &= good & (p + value_size == entry_end)
        name = key.decode("utf-8", "replace")
        if name in names:
            found[name] = (p, entry_end)
        pos = np.minimum(entry_end, len(buf) - 2)
    ok &= pos == ends
    if not ok.all() or any(name not in found for name in names):
        return None
    return found


def _entry_keys(record):
    """(key bytes, value span) of each map entry of one Example, in order."""
    out = []
    for number, wire, span in _fields(record, 0, len(record)):
        if number == 1 and wire == 2:
            for n, w, entry in _fields(record, *span):
                if n != 1 or w != 2:
                    raise ValueError("unexpected field in Features")
                key = None
                for n2, w2, sub in _fields(record, *entry):
                    if n2 == 1 and w2 == 2:
                        key = record[sub[0] : sub[1]]
                if key is None:
                    raise ValueError("map entry without a key")
                out.append((key, entry))
        else:
            raise ValueError("unexpected field in Example")
    return out


def _list_payloads(buf, start, end, list_tag, value_tag):
    """Where the values of each `Feature` message are.

    Args: Feature message spans and, per span, the expected list tag
    (Int64List/FloatList) and unpacked value tag. Returns (payload start,
    payload end, packed): packed payloads are the values back to back;
    unpacked ones are runs of (value tag, value).
    """
    _expect(buf, start, list_tag, "the value list")
    size, p = _varints_at(buf, start + 1, end)
    if (p + size != end).any():
        raise _Malformed("a Feature holds more than one list", None)
    first = buf[np.minimum(p, len(buf) - 1)]
    packed = (first == _LEN_FIELD_1) | (size == 0)
    payload_start = p
    payload_end = end
    if packed.all():
        inner, q = _varints_at(buf, p + 1, end)
        payload_start = np.where(size > 0, q, p)
        if ((q + inner != end) & (size > 0)).any():
            raise _Malformed("packed values split over several runs", None)
    else:
        payload_start = p.copy()
        rows = np.flatnonzero(packed & (size > 0))
        if len(rows):
            inner, q = _varints_at(buf, p[rows] + 1, end[rows])
            if (q + inner != end[rows]).any():
                raise _Malformed("packed values split over several runs", None)
            payload_start[rows] = q
        if (first[~packed] != value_tag[~packed]).any():
            raise _Malformed("an unexpected field in a value list", None)
    return payload_start, payload_end, packed


def _int_lists(raw, start, end, stride, want):
    """Values of packed (`stride` 1) or unpacked (2) int64 lists, `[n, want]`.

    `[start, end)` is each record's list payload in `raw` (the batch's
    bytes). All payload bytes are joined back to back, the varint ends
    found with one `flatnonzero`, and each value assembled from its (at
    most 10) bytes, last (most significant) first. Values are cast
    to int32 as `tf.cast` does (two's complement wrap). Returns (int32
    values, None), or (None, index of a row whose count of values is not
    `want`).
    """
    n = len(start)
    size = end - start
    count = want * stride
    offsets = np.cumsum(size) - size
    total = int(size.sum())
    b = np.frombuffer(
        b"".join([raw[i:j] for i, j in zip(start.tolist(), end.tolist())]), np.uint8
    )
    ends = np.flatnonzero(b < 0x80)
    row_ends = offsets + size - 1
    if len(ends) != n * count or (ends.reshape(n, count)[:, -1] != row_ends).any():
        # Some row holds another number of values: find the first.
        counts = np.add.reduceat((b < 0x80).astype(np.int64), offsets) if total else 0
        bad = np.flatnonzero((counts != count) | (size == 0))
        return None, int(bad[0]) if len(bad) else 0
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    nbytes = ends - starts + 1
    if stride == 2:
        # Unpacked: tag 0x08, value, tag 0x08, value, ...
        tags, starts, ends = starts[0::2], starts[1::2], ends[1::2]
        wrong = (b[tags] != _VARINT_FIELD_1) | (nbytes[0::2] != 1)
        if wrong.any():
            return None, int(np.flatnonzero(wrong)[0] // want)
        nbytes = nbytes[1::2]
    longest = int(nbytes.max())
    if longest > 10:
        raise _Malformed("varint too long", None)
    # Values of at most 4 bytes (below 2**28) fit 32 bits exactly.
    dtype = np.uint32 if longest <= 4 else np.uint64
    low = (b & 0x7F).astype(dtype)
    values = low[ends]
    seven = dtype(7)
    for j in range(1, longest):
        values = np.where(nbytes > j, (values << seven) | low[ends - j], values)
    signed = values.view(np.int32 if dtype is np.uint32 else np.int64)
    return signed.reshape(n, want).astype(np.int32, copy=False), None


def _decode_batch(raw, starts, ends, max_seq_length, max_predictions_per_seq):
    n = len(starts)
    buf = np.frombuffer(raw, np.uint8)
    lengths = features.feature_lengths(
        "pretraining", max_seq_length, max_predictions_per_seq
    )
    names = list(lengths)
    spans = _feature_spans_like_first(buf, starts, ends, names)
    if spans is None:
        spans = _feature_spans(buf, starts, ends, names)
    for name in names:
        missing = np.flatnonzero(spans[name][0] < 0)
        if len(missing):
            raise _Malformed(f"lacks feature {name}", int(missing[0]))
    # Every feature's list at once: [feature 0 rows, feature 1 rows, ...].
    is_float = np.repeat([lengths[k][0] == "float32" for k in names], n)
    ps, pe, packed = _list_payloads(
        buf,
        np.concatenate([spans[k][0] for k in names]),
        np.concatenate([spans[k][1] for k in names]),
        np.where(is_float, _FLOAT_LIST, _INT64_LIST),
        np.where(is_float, _FIXED32_FIELD_1, _VARINT_FIELD_1),
    )
    out = {}
    for i, name in enumerate(names):
        dtype, want = lengths[name]
        rows = slice(i * n, (i + 1) * n)
        start, end, pk = ps[rows], pe[rows], packed[rows]
        size = end - start
        if dtype == "float32":
            out[name] = _float_lists(buf, start, size, pk, want, name)
            continue
        if pk.all() and (size == want).all():
            b = np.frombuffer(
                b"".join([raw[i : i + want] for i in start.tolist()]), np.uint8
            )
            if (b < 0x80).all():  # every value one byte (masks, labels)
                out[name] = b.reshape(n, want).astype(np.int32)
                continue
        values = None
        for stride, sel in ((1, pk), (2, ~pk)):
            if not sel.any():
                continue
            idx = np.flatnonzero(sel)
            whole = len(idx) == n
            got, bad = _int_lists(
                raw,
                start if whole else start[idx],
                end if whole else end[idx],
                stride,
                want,
            )
            if bad is not None:
                row = int(idx[bad])
                try:
                    record = bytes(buf[starts[row] : ends[row]])
                    found = len(parse_example(record)[name][1])
                except (ValueError, KeyError):
                    found = "another number of"
                raise _Malformed(
                    f"{name} has {found} values, expected {want}"
                    f"{_setting_hint(name, max_seq_length, max_predictions_per_seq)}",
                    row,
                )
            if whole:
                values = got
            else:
                if values is None:
                    values = np.zeros((n, want), np.int32)
                values[idx] = got
        out[name] = values
    return out


def _float_lists(buf, start, size, packed, want, name):
    expect = np.where(packed, 4 * want, 5 * want)
    bad = np.flatnonzero(size != expect)
    if len(bad):
        row = int(bad[0])
        found = size[row] // (4 if packed[row] else 5)
        raise _Malformed(f"{name} has {found} values, expected {want}", row)
    if packed.all():
        raw = buf[start[:, None] + np.arange(4 * want)]
    else:
        stride = np.where(packed, 4, 5)[:, None, None]
        base = (start + np.where(packed, 0, 1))[:, None, None]
        raw = buf[base + stride * np.arange(want)[None, :, None] + np.arange(4)]
        tags = buf[start[~packed, None] + 5 * np.arange(want)]
        if (tags != _FIXED32_FIELD_1).any():
            raise _Malformed(f"{name}: an unexpected field in the value list", None)
    return (
        np.ascontiguousarray(raw)
        .reshape(len(start), 4 * want)
        .view("<f4")
        .astype(np.float32)
    )


def _setting_hint(name, max_seq_length, max_predictions_per_seq):
    key = features.PRETRAINING_FEATURES[name][1]
    if key == "seq":
        return f" (max_seq_length={max_seq_length})"
    if key == "pred":
        return f" (max_predictions_per_seq={max_predictions_per_seq})"
    return ""


def decode_pretraining_batch(
    records: list[bytes],
    max_seq_length: int,
    max_predictions_per_seq: int,
    *,
    path: str = "",
) -> dict[str, np.ndarray]:
    """Decodes serialized pretraining Examples into one batch of arrays.

    Args:
        records: `b` serialized `tf.train.Example`s (google-research/bert
            schema, `configs.features.PRETRAINING_FEATURES`).
        max_seq_length, max_predictions_per_seq: the lengths every record
            must have.
        path: named in errors (the file, or files, the records came from).

    Returns:
        int32 `[b, max_seq_length]` `input_ids`/`input_mask`/`segment_ids`;
        int32 `[b, max_predictions_per_seq]` `masked_lm_positions`/
        `masked_lm_ids`; float32 `[b, max_predictions_per_seq]`
        `masked_lm_weights`; int32 `[b, 1]` `next_sentence_labels` (int64
        values are cast as `tf.cast` does).

    Raises:
        RecordError: a record that is not of the schema, or of other
            lengths; the message names `path` and the record's index. Also
            for legal protobuf that no Example writer emits (unknown fields
            inside Example or Feature, a packed list split into several
            runs): refused, not decoded (found by fuzzing against
            `tf.io.parse_example`, which agrees on every record decoded).
    """
    n = len(records)
    lengths = np.fromiter(map(len, records), np.int64, n)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    # 16 spare bytes: vectorized reads may look past a (bad) record's end.
    raw = b"".join(records) + bytes(16)
    try:
        return _decode_batch(raw, starts, ends, max_seq_length, max_predictions_per_seq)
    except _Malformed as e:
        message, row = e.args
        if row is not None:
            message = f"record {row} of the batch: {message}"
        raise RecordError(path, f"not a pretraining record of this schema: {message}")


# === The measured alternative: the protobuf package (upb) ===
_EXAMPLE_CLASS = None


def _example_class():
    """`tf.train.Example` as a protobuf class built from a runtime
    descriptor (the same field numbers as tensorflow/core/example), so the
    `protobuf` package parses it without TensorFlow."""
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is not None:
        return _EXAMPLE_CLASS
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="bert_beam_keras_example.proto",
        package="bert_beam_keras_records",
        syntax="proto3",
    )

    def message(name, fields, options=None):
        m = proto.message_type.add(name=name)
        if options:
            m.options.map_entry = True
        for number, (fname, ftype, label, type_name, packed) in enumerate(fields, 1):
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".bert_beam_keras_records.{type_name}"
            if packed:
                f.options.packed = True
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", [("value", F.TYPE_BYTES, rep, None, False)])
    message("FloatList", [("value", F.TYPE_FLOAT, rep, None, True)])
    message("Int64List", [("value", F.TYPE_INT64, rep, None, True)])
    feature = message(
        "Feature",
        [
            ("bytes_list", F.TYPE_MESSAGE, opt, "BytesList", False),
            ("float_list", F.TYPE_MESSAGE, opt, "FloatList", False),
            ("int64_list", F.TYPE_MESSAGE, opt, "Int64List", False),
        ],
    )
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features_msg = message(
        "Features",
        [("feature", F.TYPE_MESSAGE, rep, "Features.FeatureEntry", False)],
    )
    entry = features_msg.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(
        name="value",
        number=2,
        type=F.TYPE_MESSAGE,
        label=opt,
        type_name=".bert_beam_keras_records.Feature",
    )
    message("Example", [("features", F.TYPE_MESSAGE, opt, "Features", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("bert_beam_keras_records.Example")
    _EXAMPLE_CLASS = message_factory.GetMessageClass(descriptor)
    return _EXAMPLE_CLASS


def decode_pretraining_batch_protobuf(
    records: list[bytes], max_seq_length: int, max_predictions_per_seq: int
) -> dict[str, np.ndarray]:
    """`decode_pretraining_batch` through the `protobuf` package (upb).

    Same output; slower (one message object and one list per feature per
    record). Kept as the independent reference the numpy decoder is tested
    against, and as the alternative `benchmarks/record_reader.py` measures.
    """
    example_class = _example_class()
    lengths = features.feature_lengths(
        "pretraining", max_seq_length, max_predictions_per_seq
    )
    columns = {name: [] for name in lengths}
    for record in records:
        feats = example_class.FromString(record).features.feature
        for name, (dtype, _) in lengths.items():
            f = feats[name]
            columns[name].append(
                f.float_list.value if dtype == "float32" else f.int64_list.value
            )
    out = {}
    for name, (dtype, want) in lengths.items():
        rows = columns[name]
        if any(len(r) != want for r in rows):
            raise RecordError("", f"{name}: records are not {want} long")
        np_dtype = np.float32 if dtype == "float32" else np.int64
        array = np.array(rows, np_dtype).reshape(len(rows), want)
        out[name] = array if dtype == "float32" else array.astype(np.int32)
    return out
