"""Pure helpers shared by the pretraining stages: fingerprints, seeded rngs,
sequence-pair truncation. No Beam, no TensorFlow.
"""

from __future__ import annotations

import hashlib
import random
import struct


def fingerprint(lines: list[str]) -> int:
    """A stable 64-bit fingerprint of a document's text.

    Depends only on the text (not on its path, byte offset, compression,
    worker or element order), so the same corpus gives the same records
    wherever it is stored and however it is split. Identical documents get
    the same fingerprint, hence the same random choices.
    """
    h = hashlib.blake2b(digest_size=8)
    for line in lines:
        h.update(line.encode("utf-8", errors="surrogatepass"))
        h.update(b"\n")
    return int.from_bytes(h.digest(), "little")


def derive_seed(seed: int, *parts: int) -> int:
    """A 64-bit seed from the job seed and integer parts (fingerprint, round,
    purpose...): blake2b of their fixed-width encoding, so it is the same in
    every process (Python's `hash()` is salted per process)."""
    h = hashlib.blake2b(digest_size=8)
    for value in (seed, *parts):
        h.update(struct.pack("<Q", value & 0xFFFFFFFFFFFFFFFF))
    return int.from_bytes(h.digest(), "little")


def make_rng(seed: int, *parts: int) -> random.Random:
    """`random.Random` seeded by `derive_seed(seed, *parts)`."""
    return random.Random(derive_seed(seed, *parts))


def truncate_seq_pair(
    tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random
) -> int:
    """Truncates a pair in place to at most `max_num_tokens` tokens in total.

    google-research/bert's rule: remove one token at a time from the longer
    sequence, from its front or back with equal chance, to avoid biasing
    toward either end. Returns the number of tokens removed.
    """
    removed = 0
    while True:
        total = len(tokens_a) + len(tokens_b)
        if total <= max_num_tokens:
            return removed
        trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc) >= 1
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()
        removed += 1


def counter_fn(namespace: str):
    """`fn(name, value=1)` incrementing Beam counter `namespace:name`.

    For the pure functions' `counter_inc_fn` inside DoFns; counters are
    created once per name (Metrics.counter is not free per element).
    """
    from apache_beam.metrics import Metrics

    cache = {}

    def inc(name: str, value: int = 1) -> None:
        if value:
            counter = cache.get(name)
            if counter is None:
                counter = cache[name] = Metrics.counter(namespace, name)
            counter.inc(value)

    return inc
