"""One serialized `tf.train.Example` read in plain Python (any schema).

`parse_example` walks the protobuf wire format: every feature, packed or
unpacked lists, map entries in any order. Slow but general: first-record
checks and error messages use it; the batch decoder for the fixed
pretraining schema is `configs.example_batches`.
"""

from __future__ import annotations

import struct

from configs import features
from configs.records import RecordError

# Protobuf tags (field number << 3 | wire type) of the Example schema.
LEN_FIELD_1 = 0x0A  # Example.features, Features.feature entry, entry key,
# packed list payload
ENTRY_VALUE = 0x12  # map entry value (Feature)
BYTES_LIST = 0x0A
FLOAT_LIST = 0x12
INT64_LIST = 0x1A
VARINT_FIELD_1 = 0x08  # an unpacked int64 value
FIXED32_FIELD_1 = 0x0D  # an unpacked float value


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


def fields(data, start, end):
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
    for number, wire, span in fields(data, 0, len(data)):
        if number != 1 or wire != 2:
            continue  # Example has only `features` (field 1)
        for number, wire, entry in fields(data, *span):
            if number != 1 or wire != 2:
                continue
            key, value = "", ("bytes", [])
            for n, w, sub in fields(data, *entry):
                if n == 1 and w == 2:
                    key = data[sub[0] : sub[1]].decode("utf-8")
                elif n == 2 and w == 2:
                    value = _parse_feature(data, *sub)
            out[key] = value
    return out


def _parse_feature(data, start, end):
    kind, values = "bytes", []
    for number, wire, span in fields(data, start, end):
        if wire != 2:
            continue
        kind = {1: "bytes", 2: "float32", 3: "int64"}.get(number)
        if kind is None:
            continue
        values = []
        for n, w, v in fields(data, *span):
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
