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
from pipelines import text

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
BUCKETS = "buckets-paired"

CounterFn = Callable[[str, int], None]


def _no_count(name: str, value: int = 1) -> None:
    pass


class SentencePair(NamedTuple):
    """Segment A and B token ids and the sentence-task label (0 or 1)."""

    tokens_a: list
    tokens_b: list
    label: int


def create_pairs(
    document: Sequence[Sequence[int]],
    other_documents: Sequence[Sequence[Sequence[int]]],
    rng: random.Random,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    sentence_task: str = "nsp",
    counter_inc_fn: CounterFn = _no_count,
) -> list[SentencePair]:
    """Cuts one document into sentence pairs.

    Args:
        document: sentences of token ids; each sentence non-empty.
        other_documents: documents random next sentences (NSP) come from;
            must not contain `document` itself. May be empty.
        rng: the only source of randomness.
        max_seq_length: final length incl. [CLS] and two [SEP].
        short_seq_prob: chance of a shorter target length.
        sentence_task: "nsp" or "sop".
        counter_inc_fn: `fn(name, value)`, called for truncations and drops.

    Returns:
        `SentencePair`s with `len(a) + len(b) <= max_seq_length - 3`,
        both non-empty.
    """
    if sentence_task not in features.SENTENCE_TASKS:
        raise ValueError(f"sentence_task must be one of {features.SENTENCE_TASKS}")
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    pairs = []
    chunk: list = []
    chunk_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        chunk.append(segment)
        chunk_length += len(segment)
        if i == len(document) - 1 or chunk_length >= target_seq_length:
            if sentence_task == "nsp":
                pair, unused = _nsp_pair(
                    chunk, other_documents, target_seq_length, rng, counter_inc_fn
                )
                i -= unused  # put the unused sentences back
            else:
                pair = _sop_pair(chunk, rng, counter_inc_fn)
            if pair is not None:
                removed = text.truncate_seq_pair(
                    pair.tokens_a, pair.tokens_b, max_num_tokens, rng
                )
                if removed:
                    counter_inc_fn(PAIRS_TRUNCATED, 1)
                    counter_inc_fn(TOKENS_TRUNCATED, removed)
                pairs.append(pair)
            chunk, chunk_length = [], 0
        i += 1
    return pairs


_flatten = itertools.chain.from_iterable


def _below(rng: random.Random, n: int) -> int:
    """A uniform int in [0, n): one `random()` call, several times cheaper
    than `randrange` (its bias, below n / 2**53, is far below any test's)."""
    return int(rng.random() * n)


def _split_point(chunk, rng) -> int:
    """How many sentences of `chunk` go into segment A."""
    return 1 + _below(rng, len(chunk) - 1) if len(chunk) >= 2 else 1


def _nsp_pair(chunk, other_documents, target_seq_length, rng, count):
    a_end = _split_point(chunk, rng)
    tokens_a = list(_flatten(chunk[:a_end]))
    if len(chunk) == 1 or rng.random() < 0.5:
        if other_documents:
            # A random B from another document of the bucket.
            target_b_length = target_seq_length - len(tokens_a)
            other = other_documents[_below(rng, len(other_documents))]
            tokens_b = []
            for j in range(_below(rng, len(other)), len(other)):
                tokens_b.extend(other[j])
                if len(tokens_b) >= target_b_length:
                    break
            return (
                SentencePair(tokens_a, tokens_b, features.NOT_NEXT),
                len(chunk) - a_end,
            )
        if len(chunk) == 1:
            count(CHUNKS_DROPPED_NO_OTHER, 1)
            return None, 0
        count(PAIRS_NO_OTHER_DOCUMENT, 1)
    tokens_b = list(_flatten(chunk[a_end:]))
    return SentencePair(tokens_a, tokens_b, features.IS_NEXT), 0


def _sop_pair(chunk, rng, count):
    if len(chunk) >= 2:
        a_end = _split_point(chunk, rng)
        tokens_a = list(_flatten(chunk[:a_end]))
        tokens_b = list(_flatten(chunk[a_end:]))
    else:
        sentence = list(chunk[0])
        if len(sentence) < 2:
            count(CHUNKS_DROPPED_ONE_TOKEN, 1)
            return None
        cut = 1 + _below(rng, len(sentence) - 1)
        tokens_a, tokens_b = sentence[:cut], sentence[cut:]
    if rng.random() < 0.5:
        return SentencePair(tokens_b, tokens_a, features.NOT_NEXT)
    return SentencePair(tokens_a, tokens_b, features.IS_NEXT)


def pack_pair(pair: SentencePair, cls_id: int, sep_id: int) -> tuple[list, int]:
    """`[CLS] A [SEP] B [SEP]` ids and the length of `[CLS] A [SEP]`
    (segment_ids are 0 for those positions, 1 for `B [SEP]`)."""
    ids = [cls_id, *pair.tokens_a, sep_id, *pair.tokens_b, sep_id]
    return ids, len(pair.tokens_a) + 2


# === Beam ===
class InstanceBatch(NamedTuple):
    """What `CreateSentencePairs` emits: one document-round's instances.

    input_ids: per instance `[CLS] A [SEP] B [SEP]` (unpadded list of ids);
    num_a: per instance the length of `[CLS] A [SEP]`; labels: per instance
    the sentence-task label; mask_seed: 64-bit seed for masking, drawn
    from the document's (seed, fingerprint, round) rng. Batching per
    document keeps Beam's per-element cost off the per-instance path.
    """

    input_ids: list
    num_a: list
    labels: list
    mask_seed: int


def document_sentences(flat: np.ndarray, ends: np.ndarray) -> list[list[int]]:
    """Splits a tokenized document (flat ids, sentence end offsets) into
    sentences of Python ints (what the pure functions take)."""
    ids = flat.tolist()
    out, start = [], 0
    for end in ends.tolist():
        out.append(ids[start:end])
        start = end
    return out


class _AssignBucketsFn(beam.DoFn):
    """`(fingerprint, flat, ends)` -> `(bucket, doc)`, the bucket a hash."""

    def __init__(self, seed: int):
        self._seed = seed

    def process(self, doc, num_buckets):
        yield text.derive_seed(self._seed, doc[0], 1) % num_buckets, doc


class _PairBucketFn(beam.DoFn):
    """One bucket -> an `InstanceBatch` per document and round."""

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
        # equal text, so ties need no tie-breaker.
        docs = sorted(docs, key=lambda d: d[0])
        sentences = [document_sentences(flat, ends) for _, flat, ends in docs]
        cls_id, sep_id = self._ids[features.CLS], self._ids[features.SEP]
        counts = collections.Counter({BUCKETS: 1})

        def count(name, value=1):  # summed here, reported once per bucket
            counts[name] += value

        count(DOCUMENTS_ONE_SENTENCE, sum(len(s) == 1 for s in sentences))
        for round_ in range(self._dupe_factor):
            for index, (fp, _, _) in enumerate(docs):
                rng = text.make_rng(self._seed, fp, round_)
                others = sentences[:index] + sentences[index + 1 :]
                pairs = create_pairs(
                    sentences[index],
                    others,
                    rng,
                    counter_inc_fn=count,
                    **self._params,
                )
                if not pairs:
                    continue
                labels = [p.label for p in pairs]
                count(PAIRS, len(pairs))
                count(PAIRS_RANDOM_NEXT, sum(labels))
                count(PAIRS_ACTUAL_NEXT, len(labels) - sum(labels))
                packed = [pack_pair(pair, cls_id, sep_id) for pair in pairs]
                yield InstanceBatch(
                    [ids for ids, _ in packed],
                    [num_a for _, num_a in packed],
                    labels,
                    rng.getrandbits(64),
                )
        for name, value in counts.items():
            self._count(name, value)
        self._progress.add(counts[PAIRS])


class CreateSentencePairs(beam.PTransform):
    """Makes NSP/SOP instances from tokenized documents, in hash buckets.

    Input: `(fingerprint: int, flat: np.ndarray[int32], ends: np.ndarray)`
    per document (see `TokenizeDocuments`). Output: one `InstanceBatch` per
    document and duplication round (`dupe_factor` rounds).

    Every document gets a bucket key `hash(seed, fingerprint) %
    num_buckets`, with `num_buckets = ceil(num_documents / bucket_size)`; a
    GroupByKey gathers each bucket, so random next sentences come from the
    ~`bucket_size` other documents of that bucket and a worker holds one
    bucket at a time. All `dupe_factor` rounds of a bucket are made there,
    each document-round with its own rng from (seed, fingerprint, round):
    the shuffle carries each document's tokens once, not `dupe_factor`
    times (10x less shuffle at bert's default), at the price of the same
    ~`bucket_size` partner documents in every round. Membership, and so
    every record, is independent of runner and workers.
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
    ):
        super().__init__()
        if sentence_task not in features.SENTENCE_TASKS:
            raise ValueError(f"sentence_task must be one of {features.SENTENCE_TASKS}")
        if max_seq_length < 8 or dupe_factor < 1 or bucket_size < 2:
            raise ValueError(
                "need max_seq_length >= 8, dupe_factor >= 1, bucket_size >= 2"
            )
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

    def expand(self, docs):
        bucket_size = self._bucket_size
        # How many buckets: from the document count (a tiny global combine).
        num_buckets = (
            docs
            | "CountDocuments" >> beam.combiners.Count.Globally()
            | "NumBuckets" >> beam.Map(lambda n: max(1, -(-n // bucket_size)))
        )
        return (
            docs
            | "AssignBuckets"
            >> beam.ParDo(
                _AssignBucketsFn(self._seed),
                beam.pvalue.AsSingleton(num_buckets),
            )
            | "GroupBuckets" >> beam.GroupByKey()
            | "PairSentences"
            >> beam.ParDo(
                _PairBucketFn(
                    seed=self._seed,
                    dupe_factor=self._dupe_factor,
                    special_ids=self._special_ids,
                    max_seq_length=self._max_seq_length,
                    short_seq_prob=self._short_seq_prob,
                    sentence_task=self._sentence_task,
                )
            )
        )
