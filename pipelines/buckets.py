"""Hash buckets of tokenized documents, shuffled through files.

`CreateSentencePairs` needs every document of a bucket in one place. A
GroupByKey of the documents would do it, but Beam's local runners
(DirectRunner's FnApiRunner, Prism) hold a whole shuffle in memory, so
their peak memory would grow with the corpus (3.3x for DirectRunner, 5.9x
for Prism from 40 MB to 1 GB of text, measured). Here the documents go to
files instead and only small references are shuffled:

1. `SpillDocumentsFn` (fused with tokenizing): buffers documents, and at
   `spill_tokens` (and at the end of a bundle) writes them, sorted by their
   bucket hash and one copy per fingerprint, as one write-once spill file;
   emits a `Spill` (its path and sizes). A retried bundle writes new
   files; only reported ones are read.
2. The spills' document and token totals (a tiny global combine) fix the
   number of buckets, `ceil(documents / bucket_size)`, and how many
   consecutive buckets make a *group* (about `group_tokens` tokens).
3. `plan_group_ranges` reads each spill's index (16 bytes a document) and emits
   `(group, (path, byte_lo, byte_hi))` for each group the spill holds: the
   file is in hash order and a group is a hash range, so that is one
   contiguous byte range.
4. A GroupByKey of those references; `read_group` reads a group's ranges
   and `split_buckets` cuts it into buckets.

A document's bucket is `floor(h * num_buckets / 2**64)` with `h =
derive_seed(seed, fingerprint, 1)`: a range partition of the hash, so it
depends only on the seed, the text and the number of documents, never on
the runner, the bundles, the spill size or the grouping. Memory is one
spill buffer while tokenizing and one group while pairing, whatever the
corpus size.

Spill file layout (little-endian), documents in ascending `h`:

    per document: fingerprint u64, n_ids u32, n_sentences u32, itemsize u16,
                  ids (n_ids x itemsize bytes, unsigned/int by itemsize),
                  sentence ends (n_sentences x int32)
    index:        h u64 x n, then the byte end of each document u64 x n
"""

from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import text

# About 32 MB of uint16 ids per spill file, and ~8 MB a group: big enough
# that the per-file and per-reference costs vanish, small enough that a
# worker's memory stays flat and a 1 GB corpus still makes ~60 groups to
# spread over workers.
SPILL_TOKENS = 16 << 20
GROUP_TOKENS = 4 << 20

_DOC_HEADER = struct.Struct("<QIIH")
_DTYPES = {2: np.uint16, 4: np.int32}
_TWO_64 = 1 << 64

# Test-only fault injection, like tfrecords.FAIL_ONCE_ENV: the first spill
# bundle to finish fails after writing its files, so the runner retries it.
FAIL_ONCE_ENV = "PIPELINES_TEST_SPILL_FAIL_ONCE"


class Spill(NamedTuple):
    """One written spill file: `documents` documents, `tokens` ids in all,
    its index (2 x 8 bytes a document) starting at byte `index_offset`."""

    path: str
    documents: int
    tokens: int
    index_offset: int


class Plan(NamedTuple):
    """How the hash space is cut: `num_buckets` buckets, `buckets_per_group`
    consecutive buckets in each of `num_groups` groups."""

    num_buckets: int
    buckets_per_group: int
    num_groups: int


def bucket_hash(seed: int, fingerprint: int) -> int:
    """The 64-bit hash a document's bucket is taken from."""
    return text.derive_seed(seed, fingerprint, 1)


def bucket_of(h: int, num_buckets: int) -> int:
    """`floor(h * num_buckets / 2**64)`: buckets are ranges of the hash."""
    return (h * num_buckets) >> 64


def _bucket_start(bucket: int, num_buckets: int) -> int:
    """The smallest hash of `bucket` (2**64 past the last bucket)."""
    return -(-bucket * _TWO_64 // num_buckets)


def make_plan(documents: int, tokens: int, bucket_size: int, group_tokens: int):
    """The buckets and groups for a corpus of `documents` documents holding
    `tokens` ids. Groups are whole buckets, so the records never depend on
    `group_tokens`; it only sets how much one worker reads at a time."""
    num_buckets = max(1, -(-documents // bucket_size))
    per_bucket = max(1, tokens // num_buckets)
    buckets_per_group = max(1, min(num_buckets, group_tokens // per_bucket))
    return Plan(num_buckets, buckets_per_group, -(-num_buckets // buckets_per_group))


def write_spill(path: str, docs: list) -> tuple[Spill, int]:
    """Writes `docs`, a list of `(h, fingerprint, flat, ends)`, as one spill
    file in ascending `h` (ties by fingerprint, so the bytes do not depend
    on arrival order), one copy of each fingerprint. Returns the spill and
    how many duplicate copies were left out (equal fingerprints mean equal
    text; pairing keeps one copy anyway, so they need not be written)."""
    docs.sort(key=lambda d: (d[0], d[1]))
    n = len(docs)
    docs = [d for i, d in enumerate(docs) if i == 0 or d[1] != docs[i - 1][1]]
    parts, hashes, byte_ends = [], [], []
    offset = tokens = 0
    for h, fp, flat, ends in docs:
        flat = np.asarray(flat)
        if flat.dtype.itemsize not in _DTYPES:
            flat = flat.astype(np.int32)
        ends = np.asarray(ends, np.int32)
        header = _DOC_HEADER.pack(fp, len(flat), len(ends), flat.dtype.itemsize)
        parts += [header, flat.astype(_DTYPES[flat.dtype.itemsize]).tobytes()]
        parts.append(ends.tobytes())
        offset += len(header) + flat.nbytes + ends.nbytes
        hashes.append(h)
        byte_ends.append(offset)
        tokens += len(flat)
    parts.append(np.array(hashes, np.uint64).tobytes())
    parts.append(np.array(byte_ends, np.uint64).tobytes())
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(b"".join(parts))
    return Spill(path, len(docs), tokens, offset), n - len(docs)


def _read_range(path: str, lo: int, hi: int) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(lo)
        data = f.read(hi - lo)
    if len(data) != hi - lo:
        raise IOError(
            f"{path}: spill file cut short (wanted bytes {lo}..{hi}, got "
            f"{len(data)}); was its temporary directory removed during the run?"
        )
    return data


def group_ranges(spill: Spill, plan: Plan):
    """`(group, byte_lo, byte_hi)` of every group present in `spill`."""
    n = spill.documents
    index = np.frombuffer(
        _read_range(spill.path, spill.index_offset, spill.index_offset + 16 * n),
        np.uint64,
    )
    hashes, byte_ends = index[:n], index[n:]
    starts = np.concatenate([[0], byte_ends]).astype(np.int64)
    for group in range(plan.num_groups):
        lo_bucket = group * plan.buckets_per_group
        hi_bucket = min(plan.num_buckets, lo_bucket + plan.buckets_per_group)
        bounds = []
        for b in (lo_bucket, hi_bucket):
            start = _bucket_start(b, plan.num_buckets)
            bounds.append(
                n
                if start >= _TWO_64
                else int(np.searchsorted(hashes, np.uint64(start), side="left"))
            )
        if bounds[1] > bounds[0]:
            yield group, int(starts[bounds[0]]), int(starts[bounds[1]])


def read_documents(path: str, lo: int, hi: int):
    """The `(fingerprint, flat, ends)` documents in bytes `lo..hi` of a spill."""
    data = memoryview(_read_range(path, lo, hi))
    at = 0
    while at < len(data):
        fp, n_ids, n_sents, itemsize = _DOC_HEADER.unpack_from(data, at)
        at += _DOC_HEADER.size
        flat = np.frombuffer(data, _DTYPES[itemsize], n_ids, at)
        at += n_ids * itemsize
        ends = np.frombuffer(data, np.int32, n_sents, at)
        at += 4 * n_sents
        yield fp, flat, ends


def split_buckets(docs, seed: int, num_buckets: int) -> list:
    """`[(bucket, [(fingerprint, flat, ends), ...]), ...]` in bucket order."""
    buckets: dict = {}
    for doc in docs:
        b = bucket_of(bucket_hash(seed, doc[0]), num_buckets)
        buckets.setdefault(b, []).append(doc)
    return sorted(buckets.items(), key=lambda item: item[0])


class SpillDocumentsFn(beam.DoFn):
    """`(fingerprint, flat, ends)` -> `Spill`, one per written file.

    Buffers up to `spill_tokens` ids of documents, then writes them as one
    file under `temp_dir`, so the documents never pass through a shuffle.
    Memory is one buffer per bundle, whatever the corpus size.
    """

    def __init__(
        self,
        temp_dir: str,
        seed: int,
        spill_tokens: int = SPILL_TOKENS,
        duplicate_counter: tuple[str, str] = ("SpillDocuments", "duplicates"),
    ):
        self._temp_dir = temp_dir
        self._seed = seed
        self._spill_tokens = spill_tokens
        self._duplicate_counter = duplicate_counter

    def setup(self):
        from apache_beam.metrics import Metrics

        self._duplicates = Metrics.counter(*self._duplicate_counter)

    def start_bundle(self):
        self._docs = []
        self._tokens = 0

    def process(self, doc):
        fp, flat, ends = doc
        self._docs.append((bucket_hash(self._seed, fp), fp, flat, ends))
        self._tokens += len(flat)
        if self._tokens >= self._spill_tokens:
            yield self._flush()

    def finish_bundle(self):
        spill = self._flush() if self._docs else None
        text.fail_once_for_test(FAIL_ONCE_ENV)  # after the file exists: a real retry
        if spill is not None:
            yield WindowedValue(spill, MIN_TIMESTAMP, [GlobalWindow()])

    def _flush(self) -> Spill:
        path = FileSystems.join(self._temp_dir, f"docs-{uuid.uuid4().hex}.spill")
        spill, duplicates = write_spill(path, self._docs)
        if duplicates:
            self._duplicates.inc(duplicates)
        self._docs, self._tokens = [], 0
        return spill


class SumSpills(beam.CombineFn):
    """`Spill`s -> `(documents, tokens)` in all."""

    def create_accumulator(self):
        return 0, 0

    def add_input(self, acc, spill):
        return acc[0] + spill.documents, acc[1] + spill.tokens

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum(a[0] for a in accs), sum(a[1] for a in accs)

    def extract_output(self, acc):
        return acc


def plan_group_ranges(spill: Spill, plan: Plan):
    """`Spill` -> `(group, (path, byte_lo, byte_hi))` per group it holds
    (a FlatMap with the corpus `Plan` as a side input)."""
    for group, lo, hi in group_ranges(spill, plan):
        yield group, (spill.path, lo, hi)
