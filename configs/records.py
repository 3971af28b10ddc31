"""TFRecord files read and framed without TensorFlow.

The JAX trainer runs where TensorFlow is not installed, so it reads the
records with this module, `configs.crc32c`, and the Example decoders
(`configs.example_proto`: one Example of any schema, plain Python;
`configs.example_batches`: a batch of pretraining Examples, numpy).

A TFRecord file is a run of frames `uint64 length | uint32 masked CRC32C of
the length | data | uint32 masked CRC32C of the data` (little endian).
`iter_record_blocks`, `iter_records`, `read_first_record` and
`count_records` check both CRCs; a frame cut short, a CRC mismatch, gzip
bytes in a file not named `*.gz` and a `*.gz` that is not gzip (or is cut
short) all raise `RecordError`, a ValueError whose message starts with the
file name. Files named `*.gz` are gunzipped on the fly (as TensorFlow's
`compression_type="GZIP"`, which the data job's `--compression=gzip`
writes). `varint`, `proto_field` and `tfrecord_frame` are the writer's
side, for writers without TensorFlow.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterator

import numpy as np

from configs.crc32c import crc32c_many, fast_value, mask_crcs, masked_crc32c

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_CHUNK_BYTES = 1 << 20
_MAX_RECORD_BYTES = 1 << 30  # a length past this is a corrupt frame


class RecordError(ValueError):
    """A record file that cannot be read as pretraining records.

    The message starts with the file's path (one line, for the user).
    """

    def __init__(self, path, message):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


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
    value = fast_value() if use_google else None
    if value is not None:
        unpack = _CRC.unpack_from
        for i, (record, end) in enumerate(zip(block, offsets)):
            crc = value(record)
            if (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF != unpack(
                buf, end
            )[0]:
                return i
        return None
    want = np.array([_CRC.unpack_from(buf, end)[0] for end in offsets], np.uint32)
    wrong = np.flatnonzero(mask_crcs(crc32c_many(block)) != want)
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
