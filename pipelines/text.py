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
    """Truncates a pair in place to at most `max_num_tokens` tokens in total
    (the cuts of `truncation_cuts`). Returns the number removed."""
    cuts = truncation_cuts(len(tokens_a), len(tokens_b), max_num_tokens, rng)
    if cuts is None:
        return 0
    front_a, back_a, front_b, back_b = cuts
    tokens_a[:] = tokens_a[front_a : len(tokens_a) - back_a]
    tokens_b[:] = tokens_b[front_b : len(tokens_b) - back_b]
    return sum(cuts)


def truncation_cuts(len_a: int, len_b: int, max_num_tokens: int, rng: random.Random):
    """How many tokens to cut from each end of A and B to fit a pair into
    `max_num_tokens`: `(front_a, back_a, front_b, back_b)`, or None (and
    no random draw) when it fits.

    google-research/bert's rule: remove one token at a time from the longer
    sequence (B on a tie), from its front or back with equal chance, to
    avoid biasing toward either end. The coin flips come from one
    `rng.getrandbits` call and are counted per side in closed form, with
    the same result as the one-at-a-time loop. (tensorflow-text's trimmers
    cut from the end only, so they do not fit this rule.)
    """
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return None
    bits = rng.getrandbits(excess)
    # Removal k takes bit k. First the longer side alone (A while it is
    # strictly longer; B while it is at least as long, ties go to B) until
    # the sides cross, then the two alternate. Counting each side's bits
    # with masks gives the same cuts as the one-at-a-time loop.
    if len_a > len_b:
        first = min(excess, len_a - len_b)
        alternate_first_is_a = False
    else:
        first = min(excess, len_b - len_a + 1)
        alternate_first_is_a = True
    rest = excess - first
    front_first = (bits & ((1 << first) - 1)).bit_count()
    tail = bits >> first
    even = ((1 << (2 * ((rest + 1) // 2))) - 1) // 3  # bits 0, 2, 4, ...
    front_even = (tail & even).bit_count()
    front_odd = (tail & (even << 1) & ((1 << rest) - 1)).bit_count()
    n_even, n_odd = (rest + 1) // 2, rest // 2
    if alternate_first_is_a:  # B went first: A takes bits first, first+2, ...
        front_a, back_a = front_even, n_even - front_even
        front_b = front_first + front_odd
        back_b = first - front_first + n_odd - front_odd
    else:
        front_b, back_b = front_even, n_even - front_even
        front_a = front_first + front_odd
        back_a = first - front_first + n_odd - front_odd
    return front_a, back_a, front_b, back_b


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


class Progress:
    """Logs `label: N units so far (R/s)` at most every `every_s` seconds,
    so a long run shows it is moving (per worker; Beam counters hold the
    totals)."""

    def __init__(self, label: str, unit: str, every_s: float = 30.0):
        import logging
        import time

        self._log = logging.getLogger("pipelines.progress")
        self._clock = time.monotonic
        self._label, self._unit, self._every = label, unit, every_s
        self._start = self._last = self._clock()
        self._n = 0

    def add(self, n: int = 1) -> None:
        self._n += n
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            rate = self._n / max(now - self._start, 1e-9)
            self._log.info(
                "%s: %d %s so far (%.0f/s)", self._label, self._n, self._unit, rate
            )


def fail_once_for_test(variable: str) -> None:
    """Test-only fault injection: when the environment variable `variable`
    names a file that does not exist yet, creates it and raises, so exactly
    one caller (even across processes) fails and the runner must retry its
    bundle. Unset in every real run: then a no-op."""
    import os

    marker = os.environ.get(variable)
    if not marker:
        return
    try:
        open(marker, "x").close()  # exactly one bundle wins, even in parallel
    except FileExistsError:
        return
    raise RuntimeError(f"injected test failure ({variable}={marker})")
