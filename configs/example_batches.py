"""A batch of pretraining `tf.train.Example`s decoded with numpy.

`decode_pretraining_batch`: a list of serialized Examples -> a dict of numpy
arrays with the tf.data path's keys, dtypes and shapes. The schema is fixed
(`configs.features`), so the protobuf wire format is walked for the whole
batch at once: the batch is checked against its first record's layout in
one pass (a vectorized step per map entry; a general walker takes batches
laid out otherwise), then each int64 list is varint-decoded for all records
at once. Packed lists (what `tf.train.Example.SerializeToString` and our
writer emit) and unpacked ones (legal protobuf, emitted by some writers)
are both read; map entries may come in any order; unknown features are
skipped.

`decode_pretraining_batch_protobuf` is the measured alternative (the
`protobuf` package's upb parser, an Example descriptor built at runtime):
about 5x slower on one core, kept as the independent reference the tests
compare with (`benchmarks/record_reader.py` measures both).
"""

from __future__ import annotations

import numpy as np

from configs import example_proto, features
from configs.records import RecordError


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
    _expect(buf, starts, example_proto.LEN_FIELD_1, "Example.features")
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
        _expect(buf, p, example_proto.LEN_FIELD_1, "a feature map entry")
        size, p = _varints_at(buf, p + 1, end)
        entry_end = p + size
        if (entry_end > end).any():
            raise _Malformed("a map entry runs past its record", None)
        _expect(buf, p, example_proto.LEN_FIELD_1, "a feature name")
        key_len, key_start = _varints_at(buf, p + 1, entry_end)
        p = key_start + key_len
        if (p >= entry_end).any():
            raise _Malformed("a feature name runs past its map entry", None)
        _expect(buf, p, example_proto.ENTRY_VALUE, "a feature value")
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
    ok &= (buf[starts] == example_proto.LEN_FIELD_1) & (pos + size == ends)
    found = {}
    for key in order:
        entry_size, p, good = _short_varint(buf, pos + 1)
        ok &= good & (buf[pos] == example_proto.LEN_FIELD_1)
        entry_end = p + entry_size
        header = np.frombuffer(
            bytes([example_proto.LEN_FIELD_1, len(key)])
            + key
            + bytes([example_proto.ENTRY_VALUE]),
            np.uint8,
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
    for number, wire, span in example_proto.fields(record, 0, len(record)):
        if number == 1 and wire == 2:
            for n, w, entry in example_proto.fields(record, *span):
                if n != 1 or w != 2:
                    raise ValueError("unexpected field in Features")
                key = None
                for n2, w2, sub in example_proto.fields(record, *entry):
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
    packed = (first == example_proto.LEN_FIELD_1) | (size == 0)
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
        wrong = (b[tags] != example_proto.VARINT_FIELD_1) | (nbytes[0::2] != 1)
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
        np.where(is_float, example_proto.FLOAT_LIST, example_proto.INT64_LIST),
        np.where(is_float, example_proto.FIXED32_FIELD_1, example_proto.VARINT_FIELD_1),
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
                    found = len(example_proto.parse_example(record)[name][1])
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
        if (tags != example_proto.FIXED32_FIELD_1).any():
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
