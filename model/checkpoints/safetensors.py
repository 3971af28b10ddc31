"""The safetensors file format, read and written with numpy alone.

A file is an 8-byte little-endian header length `n`, `n` bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{...}}`), then the tensors' raw little-endian bytes, offsets relative to
the end of the header. That is all of it; reading it here (not with the
`safetensors` package) keeps torch and every other framework out, lets
bfloat16 load (numpy has no bfloat16: its 16 bits are the top half of a
float32, so the upcast is a shift), and lets every lie in a header (sizes,
offsets, shapes) be one clear line naming the file.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from configs import fileio

# safetensors dtype -> (numpy dtype of the stored bytes, bytes per element)
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # upcast in `read`
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NUMPY_TO_NAME = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
}
# A header larger than this is not a checkpoint header (the format's own
# reference implementation uses the same 100 MB bound).
_MAX_HEADER = 100_000_000


class SafetensorsError(ValueError):
    """A file that is not valid safetensors; the message is one line."""


def read_header(path: str) -> tuple[dict, int, int]:
    """Returns (tensor entries by name, data start offset, file size).

    Raises:
        SafetensorsError: the header is cut, not JSON, or lies about sizes.
    """
    size = _size(path)
    with fileio.open_file(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: cut short ({size} bytes, no header)")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or 8 + length > size:
            raise SafetensorsError(
                f"{path}: header says {length} bytes but the file has {size} "
                "(cut short, or not a safetensors file)"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError(f"{path}: header is not JSON (not a safetensors file)")
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    header.pop("__metadata__", None)
    start = 8 + length
    for name, entry in header.items():
        _check_entry(path, name, entry, size - start)
    return header, start, size


def _check_entry(path, name, entry, data_size):
    try:
        dtype, shape, (begin, end) = (
            entry["dtype"],
            entry["shape"],
            entry["data_offsets"],
        )
    except (KeyError, TypeError, ValueError):
        raise SafetensorsError(f"{path}: header entry {name} is malformed")
    if dtype not in _DTYPES:
        raise SafetensorsError(f"{path}: {name} has unsupported dtype {dtype}")
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != count * _DTYPES[dtype].itemsize or begin < 0:
        raise SafetensorsError(
            f"{path}: {name} is {dtype} {list(shape)} ({count * _DTYPES[dtype].itemsize}"
            f" bytes) but its offsets span {end - begin} bytes"
        )
    if end > data_size:
        raise SafetensorsError(
            f"{path}: {name} ends at byte {end} of the data but the file holds "
            f"{data_size} (cut short?)"
        )


def read(path: str, names=None) -> dict[str, np.ndarray]:
    """Reads tensors (all, or `names`) from one file.

    Floating tensors come back as float32 (bf16 and f16 upcast exactly;
    f64 is narrowed), integer and bool ones as stored.

    Raises:
        SafetensorsError: see `read_header`.
    """
    header, start, _ = read_header(path)
    wanted = header if names is None else [n for n in names if n in header]
    data = fileio.read_bytes(path) if fileio.is_remote(path) else None
    out = {}
    with fileio.open_file(path, "rb") as f:
        for name in wanted:
            entry = header[name]
            begin, end = entry["data_offsets"]
            if data is None:
                f.seek(start + begin)
                raw = f.read(end - begin)
            else:
                raw = data[start + begin : start + end]
            out[name] = _decode(raw, entry["dtype"], entry["shape"])
    return out


def _decode(raw, dtype, shape):
    values = np.frombuffer(raw, dtype=_DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    if values.dtype.kind == "f":
        return values.astype(np.float32)
    return values.copy()


def write(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Writes `tensors` (name -> numpy array) as one safetensors file.

    Names are sorted and data 8-byte aligned, as the reference writer does.
    Written to a temporary name and renamed (atomic on local disks).
    """
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    chunks, offset = [], 0
    for name in sorted(tensors):
        value = np.ascontiguousarray(tensors[name])
        if value.dtype not in _NUMPY_TO_NAME:
            value = value.astype(np.float32)
        raw = value.astype(value.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _NUMPY_TO_NAME[value.dtype],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    fileio.write_atomic(path, struct.pack("<Q", len(text)) + text + b"".join(chunks))


def _size(path):
    if fileio.is_remote(path):
        return len(fileio.read_bytes(path))
    return os.path.getsize(path)
