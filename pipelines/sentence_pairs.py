"""Sentence pairs for NSP (BERT) or SOP (ALBERT): `create_pairs` + `CreateSentencePairs`.

The algorithm is google-research/bert's `create_instances_from_document`:
a target length of `max_seq_length - 3` tokens (shorter, uniform in
[2, max], with `short_seq_prob`, drawn once per document); chunks of whole
sentences filling the target; a random split point making segment A; then

* NSP: with probability 1/2 (always for a one-sentence chunk) segment B is
  taken from a random position of *another document*, and the sentences of
  the chunk that were not used are put back for the next chunk (label 1);
  otherwise B is the rest of the chunk (label 0).
* SOP: A and B are the two parts of the chunk, swapped with probability
  1/2 (label 1 = swapped). A one-sentence chunk is split inside the
  sentence at a random token (ALBERT would draw B from another document
  here, which mixes NSP into SOP's labels).

`truncate_seq_pair` trims the pair longest-first from a random end.
The difference from google-research/bert is where the random documents
come from: a bucket of about `bucket_size` documents chosen by hash
(DESIGN.md "Randomness and scale"), not the whole corpus held in memory.
"""

from __future__ import annotations

import collections
import itertools
import random
from typing import Callable, NamedTuple, Sequence

import apache_beam as beam
import numpy as np

from configs import features
from pipelines import buckets, text

# === Counters (namespace CreateSentencePairs) ===
NAMESPACE = "CreateSentencePairs"
PAIRS = "pairs-created"
PAIRS_ACTUAL_NEXT = "pairs-label-0-actual-next-or-in-order"
PAIRS_RANDOM_NEXT = "pairs-label-1-random-next-or-swapped"
PAIRS_TRUNCATED = "pairs-truncated"
TOKENS_TRUNCATED = "tokens-removed-by-truncation"
PAIRS_NO_OTHER_DOCUMENT = "pairs-kept-in-order-for-lack-of-another-document"
CHUNKS_DROPPED_NO_OTHER = "chunks-dropped-one-sentence-and-no-other-document"
CHUNKS_DROPPED_ONE_TOKEN = "chunks-dropped-one-token-only"
DOCUMENTS_ONE_SENTENCE = "documents-with-one-sentence"
DOCUMENTS_DUPLICATE = "documents-duplicate-dropped"
BUCKETS = "buckets-paired"

CounterFn = Callable[[str, int], None]


def _no_count(name: str, value: int = 1) -> None:
    pass


class SentencePair(NamedTuple):
    """Segment A and B token ids and the sentence-task label (0 or 1)."""

    tokens_a: list
    tokens_b: list
    label: int


class PairSpan(NamedTuple):
    """Where a pair's segments lie: token ranges `[lo, hi)` of documents.

    `a_doc`/`b_doc` index the documents the caller passed: -1 is the
    document being cut, `k >= 0` is `other_documents[k]`. Offsets count
    tokens from the start of that document's concatenated sentences, after
    truncation.
    """

    a_doc: int
    a_lo: int
    a_hi: int
    b_doc: int
    b_lo: int
    b_hi: int
    label: int


def create_pair_spans(
    lengths: Sequence[int],
    other_lengths: Sequence[Sequence[int]],
    rng: random.Random,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    sentence_task: str = "nsp",
    counter_inc_fn: CounterFn = _no_count,
    other_starts: Sequence[Sequence[int]] | None = None,
) -> list[PairSpan]:
    """Cuts one document into sentence pairs, as token ranges.

    The whole algorithm (module doc) works on sentence lengths alone: no
    token is copied here, so the pipeline gathers every instance's ids in
    one array operation per batch (`gather_instances`).

    Args:
        lengths: token count of each sentence of the document (each > 0).
        other_lengths: the same for each document random next sentences
            (NSP) come from; must not contain the document itself.
        rng: the only source of randomness.
        max_seq_length: final length incl. [CLS] and two [SEP].
        short_seq_prob: chance of a shorter target length.
        sentence_task: "nsp" or "sop".
        counter_inc_fn: `fn(name, value)`, called for truncations and drops.
        other_starts: optional, per other document `[0, *cumsum(lengths)]`
            (a caller cutting many documents of one bucket computes them
            once instead of once per document).

    Returns:
        `PairSpan`s with `(a_hi - a_lo) + (b_hi - b_lo) <= max_seq_length - 3`,
        both segments non-empty.
    """
    if sentence_task not in features.SENTENCE_TASKS:
        raise ValueError(f"sentence_task must be one of {features.SENTENCE_TASKS}")
    nsp = sentence_task == "nsp"
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    starts = [0, *itertools.accumulate(lengths)]  # token offset of sentence i
    if nsp and other_starts is None:
        other_starts = _starts(other_lengths)

    spans = []
    n = len(lengths)
    chunk_start, chunk_length = 0, 0
    i = 0
    while i < n:
        chunk_length += lengths[i]
        if i == n - 1 or chunk_length >= target_seq_length:
            c0, c1 = chunk_start, i + 1  # the chunk: sentences [c0, c1)
            if nsp:
                span, unused = _nsp_span(
                    starts,
                    c0,
                    c1,
                    other_lengths,
                    other_starts,
                    target_seq_length,
                    rng,
                    counter_inc_fn,
                )
                i -= unused  # put the unused sentences back
            else:
                span = _sop_span(starts, c0, c1, rng, counter_inc_fn)
            if span is not None:
                cuts = text.truncation_cuts(
                    span[2] - span[1], span[5] - span[4], max_num_tokens, rng
                )
                if cuts is not None:
                    front_a, back_a, front_b, back_b = cuts
                    span[1] += front_a
                    span[2] -= back_a
                    span[4] += front_b
                    span[5] -= back_b
                    counter_inc_fn(PAIRS_TRUNCATED, 1)
                    counter_inc_fn(TOKENS_TRUNCATED, sum(cuts))
                spans.append(PairSpan(*span))
            chunk_start, chunk_length = i + 1, 0
        i += 1
    return spans


def _starts(lengths_per_document):
    """`[0, *cumsum(lengths)]` per document: token offsets of sentences."""
    return [[0, *itertools.accumulate(x)] for x in lengths_per_document]


def _nsp_span(starts, c0, c1, other_lengths, other_starts, target, rng, count):
    """NSP: A = the chunk's first sentences; B = the rest (label 0) or, half
    the time and always for a one-sentence chunk, sentences from a random
    position of another document up to the target length (label 1; the
    chunk's unused sentences go back). Returns `(span or None, unused)`."""
    size = c1 - c0
    a_end = c0 + (1 + _below(rng, size - 1) if size >= 2 else 1)
    a_lo, a_hi = starts[c0], starts[a_end]
    if size == 1 or rng.random() < 0.5:
        if other_lengths:
            target_b_length = target - (a_hi - a_lo)
            d = _below(rng, len(other_lengths))
            other = other_lengths[d]
            j = j0 = _below(rng, len(other))
            b_length = 0
            while j < len(other):
                b_length += other[j]
                j += 1
                if b_length >= target_b_length:
                    break
            b_lo, b_hi = other_starts[d][j0], other_starts[d][j]
            return [-1, a_lo, a_hi, d, b_lo, b_hi, features.NOT_NEXT], c1 - a_end
        if size == 1:
            count(CHUNKS_DROPPED_NO_OTHER, 1)
            return None, 0
        count(PAIRS_NO_OTHER_DOCUMENT, 1)
    return [-1, a_lo, a_hi, -1, a_hi, starts[c1], features.IS_NEXT], 0


def _sop_span(starts, c0, c1, rng, count):
    """SOP: the chunk's two parts (sentences, or tokens of one sentence),
    swapped with probability 1/2 (label 1)."""
    if c1 - c0 >= 2:
        a_end = c0 + 1 + _below(rng, c1 - c0 - 1)
        cut = starts[a_end]
    else:
        length = starts[c1] - starts[c0]
        if length < 2:
            count(CHUNKS_DROPPED_ONE_TOKEN, 1)
            return None
        cut = starts[c0] + 1 + _below(rng, length - 1)
    first, second = (starts[c0], cut), (cut, starts[c1])
    if rng.random() < 0.5:
        return [-1, *second, -1, *first, features.NOT_NEXT]
    return [-1, *first, -1, *second, features.IS_NEXT]


def create_pairs(
    document: Sequence[Sequence[int]],
    other_documents: Sequence[Sequence[Sequence[int]]],
    rng: random.Random,
    **params,
) -> list[SentencePair]:
    """`create_pair_spans` on sentences of token ids, returning the pairs'
    tokens (`SentencePair`s). The readable form of the algorithm, for
    tests and callers outside Beam; same randomness, same pairs.

    Args:
        document: sentences of token ids; each sentence non-empty.
        other_documents: documents random next sentences (NSP) come from;
            must not contain `document` itself. May be empty.
        rng, **params: as `create_pair_spans`.
    """
    spans = create_pair_spans(
        [len(s) for s in document],
        [[len(s) for s in d] for d in other_documents],
        rng,
        **params,
    )
    flat = [list(_flatten(document))] + [list(_flatten(d)) for d in other_documents]
    return [
        SentencePair(
            flat[sp.a_doc + 1][sp.a_lo : sp.a_hi],
            flat[sp.b_doc + 1][sp.b_lo : sp.b_hi],
            sp.label,
        )
        for sp in spans
    ]


_flatten = itertools.chain.from_iterable


def _below(rng: random.Random, n: int) -> int:
    """A uniform int in [0, n): one `random()` call, several times cheaper
    than `randrange` (its bias, below n / 2**53, is far below any test's)."""
    return int(rng.random() * n)


def pack_pair(pair: SentencePair, cls_id: int, sep_id: int) -> tuple[list, int]:
    """`[CLS] A [SEP] B [SEP]` ids and the length of `[CLS] A [SEP]`
    (segment_ids are 0 for those positions, 1 for `B [SEP]`)."""
    ids = [cls_id, *pair.tokens_a, sep_id, *pair.tokens_b, sep_id]
    return ids, len(pair.tokens_a) + 2


def gather_instances(pool, spans_a, spans_b, max_seq_length, cls_at, sep_at):
    """`[CLS] A [SEP] B [SEP]` rows for many pairs at once (numpy).

    Args:
        pool: int array, the bucket's documents' ids back to back, then
            `[CLS]` at index `cls_at` and `[SEP]` at `sep_at`.
        spans_a, spans_b: int arrays `[n, 2]`, `[lo, hi)` of segments A and
            B in `pool`.
        max_seq_length: row width.

    Returns:
        `(ids [n, max_seq_length] int32 zero-padded, lengths [n], num_a [n])`
        with `num_a` the length of `[CLS] A [SEP]`.
    """
    n = len(spans_a)
    len_a = spans_a[:, 1] - spans_a[:, 0]
    len_b = spans_b[:, 1] - spans_b[:, 0]
    # Five pieces per row: [CLS], A, [SEP], B, [SEP]; a range-concatenation
    # gather: index = piece start + position inside the piece.
    piece_start = np.stack(
        [
            np.full(n, cls_at),
            spans_a[:, 0],
            np.full(n, sep_at),
            spans_b[:, 0],
            np.full(n, sep_at),
        ],
        axis=1,
    ).ravel()
    piece_len = np.stack(
        [
            np.ones(n, np.int64),
            len_a,
            np.ones(n, np.int64),
            len_b,
            np.ones(n, np.int64),
        ],
        axis=1,
    ).ravel()
    out_start = np.cumsum(piece_len) - piece_len
    index = np.repeat(piece_start - out_start, piece_len) + np.arange(
        out_start[-1] + piece_len[-1] if n else 0
    )
    lengths = len_a + len_b + 3
    ids = np.zeros((n, max_seq_length), np.int32)
    ids[np.arange(max_seq_length) < lengths[:, None]] = pool[index]
    return ids, lengths, len_a + 2


# === Beam ===
MAX_BATCH_ROWS = 4096  # instances per InstanceBatch (bounds its memory)
_MASK_SEED_TAG = 0x4D41534B  # keeps mask seeds apart from other derived seeds


class InstanceBatch(NamedTuple):
    """What `CreateSentencePairs` emits: one bucket-round's instances.

    input_ids: int32 `[n, max_seq_length]`, `[CLS] A [SEP] B [SEP]` then
    zero padding; lengths: `[n]` unpadded lengths; num_a: `[n]` length of
    `[CLS] A [SEP]`; labels: `[n]` sentence-task labels; mask_seed: 64-bit
    seed for masking, from (seed, the bucket's smallest fingerprint, round,
    slice). Large batches keep Beam's per-element cost and numpy's per-call
    cost off the per-instance path.
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    num_a: np.ndarray
    labels: np.ndarray
    mask_seed: int


class _PairBucketFn(beam.DoFn):
    """One bucket -> an `InstanceBatch` per round (sliced when large)."""

    def __init__(self, **params):
        self._params = params  # small scalars only
        self._seed = params.pop("seed")
        self._ids = params.pop("special_ids")
        self._dupe_factor = params.pop("dupe_factor")

    def setup(self):
        self._count = text.counter_fn(NAMESPACE)
        self._progress = text.Progress("CreateSentencePairs", "instances")

    def process(self, element):
        _, docs = element
        # Sort by fingerprint: the grouping's order is the runner's, the
        # random choices must not depend on it. Equal fingerprints mean
        # equal text: such copies would make the same pairs (their random
        # choices come from the fingerprint) with "random next" sentences
        # drawn from each other, and a much-copied long document would
        # swell its bucket. One copy is kept; the rest are counted.
        docs = sorted(docs, key=lambda d: d[0])
        unique = [d for i, d in enumerate(docs) if i == 0 or d[0] != docs[i - 1][0]]
        duplicates, docs = len(docs) - len(unique), unique
        # Sentence lengths drive the algorithm; the ids stay in one array
        # (the bucket's documents back to back, then [CLS], [SEP]).
        lengths = [np.diff(ends, prepend=0).tolist() for _, _, ends in docs]
        starts = _starts(lengths)
        offsets = np.cumsum([0] + [len(flat) for _, flat, _ in docs])
        cls_at, sep_at = int(offsets[-1]), int(offsets[-1]) + 1
        pool = np.concatenate(
            [flat for _, flat, _ in docs]
            + [np.array([self._ids[features.CLS], self._ids[features.SEP]])]
        ).astype(np.int32)
        max_seq_length = self._params["max_seq_length"]
        counts = collections.Counter({BUCKETS: 1, DOCUMENTS_DUPLICATE: duplicates})

        def count(name, value=1):  # summed here, reported once per bucket
            counts[name] += value

        count(DOCUMENTS_ONE_SENTENCE, sum(len(x) == 1 for x in lengths))
        for round_ in range(self._dupe_factor):
            parts = []
            for index, (fp, _, _) in enumerate(docs):
                rng = text.make_rng(self._seed, fp, round_)
                spans = create_pair_spans(
                    lengths[index],
                    lengths[:index] + lengths[index + 1 :],
                    rng,
                    counter_inc_fn=count,
                    other_starts=starts[:index] + starts[index + 1 :],
                    **self._params,
                )
                if not spans:
                    continue
                s = np.array(spans, np.int64).reshape(-1, 7)
                # Span documents -> pool offsets: -1 is `index`; others
                # skip `index` in the bucket's order.
                for doc_col, lo_col in ((0, 1), (3, 4)):
                    d = s[:, doc_col]
                    d = np.where(d < 0, index, d + (d >= index))
                    s[:, lo_col : lo_col + 2] += offsets[d][:, None]
                parts.append(s)
            if not parts:
                continue
            s = np.concatenate(parts)
            random_next = int(s[:, 6].sum())
            count(PAIRS, len(s))
            count(PAIRS_RANDOM_NEXT, random_next)
            count(PAIRS_ACTUAL_NEXT, len(s) - random_next)
            # One batch per bucket-round (in slices of MAX_BATCH_ROWS): the
            # per-batch costs downstream (masking, encoding) are paid once
            # for ~bucket_size documents, which matters most for corpora of
            # short documents. Its masking seed comes from the bucket's
            # first (smallest) fingerprint, the round and the slice: the
            # same on every runner, like the bucket itself.
            for part, lo in enumerate(range(0, len(s), MAX_BATCH_ROWS)):
                rows = s[lo : lo + MAX_BATCH_ROWS]
                ids, lengths_, num_a = gather_instances(
                    pool, rows[:, 1:3], rows[:, 4:6], max_seq_length, cls_at, sep_at
                )
                mask_seed = text.derive_seed(
                    self._seed, docs[0][0], round_, part, _MASK_SEED_TAG
                )
                yield InstanceBatch(ids, lengths_, num_a, rows[:, 6], mask_seed)
        for name, value in counts.items():
            self._count(name, value)
        self._progress.add(counts[PAIRS])


class _PairGroupFn(_PairBucketFn):
    """`(group, [(spill path, byte_lo, byte_hi), ...])` -> the
    `InstanceBatch`es of each bucket of the group, in bucket order; the
    corpus `buckets.Plan` comes as a side input."""

    def process(self, element, plan):
        _, ranges = element
        docs = []
        for path, lo, hi in sorted(ranges):
            docs.extend(buckets.read_documents(path, lo, hi))
        for bucket in buckets.split_buckets(docs, self._seed, plan.num_buckets):
            yield from super().process(bucket)


class CreateSentencePairs(beam.PTransform):
    """Makes NSP/SOP instances from tokenized documents, in hash buckets.

    Input: `(fingerprint: int, flat: np.ndarray[uint16|int32], ends:
    np.ndarray[int32])` per document (see `TokenizeDocuments`). Output: one
    `InstanceBatch` per bucket and duplication round (`dupe_factor`
    rounds), sliced into `MAX_BATCH_ROWS` rows.

    Every document belongs to one of `num_buckets = ceil(num_documents /
    bucket_size)` buckets, a range of `hash(seed, fingerprint)`, so random
    next sentences come from the ~`bucket_size` other documents of its
    bucket. The documents reach their bucket through files, not a shuffle
    (`pipelines.buckets`: spilled while tokenizing, only byte ranges
    grouped), so no runner ever holds the corpus in memory: a worker holds
    one spill buffer, then one group of buckets (~`group_tokens` ids). All
    `dupe_factor` rounds of a bucket are made there, each document-round's
    pairs with their own rng from (seed, fingerprint, round), the masks per
    bucket-round (see `InstanceBatch`): the documents are written and read
    once, not `dupe_factor` times, at the price of the same ~`bucket_size`
    partner documents in every round. Membership, and so every record, is
    independent of runner, workers, bundles, spill and group sizes.

    Identical documents (equal fingerprints) are paired once and the other
    copies counted (`documents-duplicate-dropped`): every copy would make
    the same pairs, with "random next" sentences from its own copies.
    Copies within one spill file are dropped before the documents are
    counted for the number of buckets, copies across files after, so a
    corpus with many copies gets buckets of somewhat under `bucket_size`.

    Args:
        temp_dir: where the spill files go (a directory of this run that
            is deleted once its records are written; see
            `tfrecords.WriteTfRecords`).
    """

    def __init__(
        self,
        *,
        special_ids: dict,
        max_seq_length: int,
        short_seq_prob: float,
        sentence_task: str,
        dupe_factor: int,
        bucket_size: int,
        seed: int,
        temp_dir: str,
        spill_tokens: int = buckets.SPILL_TOKENS,
        group_tokens: int = buckets.GROUP_TOKENS,
    ):
        super().__init__()
        if sentence_task not in features.SENTENCE_TASKS:
            raise ValueError(f"sentence_task must be one of {features.SENTENCE_TASKS}")
        if max_seq_length < 8 or dupe_factor < 1 or bucket_size < 2:
            raise ValueError(
                "need max_seq_length >= 8, dupe_factor >= 1, bucket_size >= 2"
            )
        if spill_tokens < 1 or group_tokens < 1:
            raise ValueError("spill_tokens and group_tokens must be positive")
        self._special_ids = {
            features.CLS: special_ids[features.CLS],
            features.SEP: special_ids[features.SEP],
        }
        self._max_seq_length = max_seq_length
        self._short_seq_prob = short_seq_prob
        self._sentence_task = sentence_task
        self._dupe_factor = dupe_factor
        self._bucket_size = bucket_size
        self._seed = seed
        self._temp_dir = temp_dir
        self._spill_tokens = spill_tokens
        self._group_tokens = group_tokens

    def expand(self, docs):
        spills = docs | "SpillDocuments" >> beam.ParDo(
            buckets.SpillDocumentsFn(
                self._temp_dir,
                self._seed,
                self._spill_tokens,
                duplicate_counter=(NAMESPACE, DOCUMENTS_DUPLICATE),
            )
        )
        # Documents and ids in all fix the buckets and groups (a tiny
        # global combine over one element per spill file), computed once.
        bucket_size, group_tokens = self._bucket_size, self._group_tokens
        plan = beam.pvalue.AsSingleton(
            spills
            | "CountDocuments" >> beam.CombineGlobally(buckets.SumSpills())
            | "PlanBuckets"
            >> beam.Map(lambda t: buckets.make_plan(*t, bucket_size, group_tokens))
        )
        return (
            spills
            | "PlanGroups" >> beam.FlatMap(buckets.plan_group_ranges, plan)
            | "GroupBuckets" >> beam.GroupByKey()
            | "PairSentences"
            >> beam.ParDo(
                _PairGroupFn(
                    seed=self._seed,
                    dupe_factor=self._dupe_factor,
                    special_ids=self._special_ids,
                    max_seq_length=self._max_seq_length,
                    short_seq_prob=self._short_seq_prob,
                    sentence_task=self._sentence_task,
                ),
                plan,
            )
        )
