"""CRC32C (Castagnoli), as TFRecord frames use it, without TensorFlow.

`google-crc32c` computes it when installed (a binary wheel on every common
platform; it comes with `apache-beam[gcp]`); else a numpy implementation
that is vectorized across records (`crc32c_many`).
"""

from __future__ import annotations

import numpy as np

try:
    import google_crc32c as _google_crc32c

    FAST_CRC = _google_crc32c.implementation == "c"
except ImportError:  # pragma: no cover - depends on the environment
    _google_crc32c = None
    FAST_CRC = False


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
    if _google_crc32c is not None and FAST_CRC:
        return _google_crc32c.value(data)
    return int(crc32c_many([bytes(data)])[0])


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def mask_crcs(crcs: np.ndarray) -> np.ndarray:
    crcs = crcs.astype(np.uint32)
    rotated = (crcs >> np.uint32(15)) | (crcs << np.uint32(17))
    return (rotated.astype(np.uint64) + 0xA282EAD8).astype(np.uint32)


def fast_value():
    """google-crc32c's C `value` function, or None where it is not fast."""
    return _google_crc32c.value if FAST_CRC else None
