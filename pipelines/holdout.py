"""Whole documents held out for evaluation: `HoldOutDocuments`.

`--eval_documents=N` (a count) or `--eval_documents=0.01` (a fraction)
sends whole documents to a held-out split, never a part of one, so no
sentence of a held-out document reaches a training record (its sentence
pairs, and the "random next" segments of its pairs, are made only from
other held-out documents).

A document's place is decided by its hold-out hash, `derive_seed(seed,
fingerprint, HOLD_OUT_TAG) >> 1` with the fingerprint of its text
(`text.fingerprint`, the identity every later stage uses): a 63-bit number
that depends only on the job seed and the text (DESIGN.md "Randomness and
scale"), never on the runner, the workers or the element order. So the
same input and seed give the same split everywhere, a rerun gives the same
split, and identical copies of a text always land on the same side (a copy
in training of an evaluation text would be a leak).

* A fraction `f` holds out the documents with `hash < f * 2**63`: each
  document independently, with chance `f`; no global step.
* A count `N` holds out the `N` documents with the smallest hashes: one
  small global combine (`SmallestDistinct`, the `N + 1` smallest distinct
  hashes) gives the bound. Copies of one text count once, so exactly `N`
  distinct texts are held out. A corpus of at most `N` distinct texts
  would leave nothing to train on: the job fails with one line there,
  before any document is tokenized.

The split waits for the bound, so on Beam's local runners the documents
it splits would sit in memory until the combine is done; the job
therefore hashes a second read of the corpus (`reread`): the split then
streams documents from its own read, fused with tokenizing.
"""

from __future__ import annotations

import heapq
import math

import apache_beam as beam

from pipelines import text
from pipelines.errors import input_error

# === Counters (namespace HoldOutDocuments) ===
NAMESPACE = "HoldOutDocuments"
DOCUMENTS_HELD_OUT = "documents-held-out"
DOCUMENTS_KEPT = "documents-kept-for-training"

TRAIN, EVAL = "train", "eval"  # the keys of the transform's outputs
HOLD_OUT_TAG = 0x4556414C  # "EVAL": keeps the hash apart from other derived seeds
# Hashes are 63-bit: they go through Beam's int coder (a signed 64-bit
# varint) into the global combine.
_HASH_RANGE = 1 << 63


def parse_eval_documents(value) -> int | float:
    """The `--eval_documents` value: 0 (hold nothing out), a count `N >= 1`
    (a whole number) or a fraction in `(0, 1)` (written with a point).

    Raises:
        ValueError: one line saying what is wrong.
    """
    raw = str(value).strip()
    try:
        number = int(raw)
    except ValueError:
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(
                f"eval_documents {raw!r} is neither a count of documents "
                "(e.g. 100) nor a fraction (e.g. 0.01)"
            ) from None
        if not math.isfinite(number) or not 0 <= number < 1:
            raise ValueError(
                f"eval_documents {raw}: a fraction must be at least 0 and "
                "below 1 (a count of documents is a whole number, e.g. 100)"
            )
        return 0 if number == 0 else number
    if number < 0:
        raise ValueError(f"eval_documents {raw} is negative")
    return number


def hold_out_hash(seed: int, fingerprint: int) -> int:
    """A document's hold-out hash in `[0, 2**63)`, from the seed and its
    text only."""
    return text.derive_seed(seed, fingerprint, HOLD_OUT_TAG) >> 1


def fraction_bound(fraction: float) -> int:
    """Hashes below this are held out for a fraction (chance `fraction`)."""
    return min(_HASH_RANGE, int(fraction * _HASH_RANGE))


class SmallestDistinct(beam.CombineFn):
    """The `k` smallest distinct ints of a PCollection, ascending.

    Memory per accumulator is about `2 k` ints: a set pruned to its `k`
    smallest whenever it doubles. (`combiners.Top.Smallest` keeps repeated
    values, and copies of one document share a hash.)
    """

    def __init__(self, k: int):
        super().__init__()
        if k < 1:
            raise ValueError("k must be at least 1")
        self._k = k

    def create_accumulator(self):
        return set()

    def _prune(self, values: set) -> set:
        if len(values) > 2 * self._k:
            return set(heapq.nsmallest(self._k, values))
        return values

    def add_input(self, accumulator, value):
        accumulator.add(value)
        return self._prune(accumulator)

    def merge_accumulators(self, accumulators):
        merged = set()
        for accumulator in accumulators:
            merged |= accumulator
            merged = self._prune(merged)
        return merged

    def extract_output(self, accumulator):
        return heapq.nsmallest(self._k, accumulator)


def count_bound(smallest: list[int], count: int) -> int:
    """Hashes below this are held out for a count: `smallest` holds the
    `count + 1` smallest distinct hashes of the corpus.

    Raises (inside the pipeline, reported as one line):
        JobFailed: the corpus has at most `count` distinct documents.
    """
    if len(smallest) <= count:
        raise input_error(
            f"eval_documents={count} would hold out every document: the "
            f"corpus has {len(smallest)} document(s) with text, so nothing "
            "would be left to train on (hold out fewer, or a fraction)"
        )
    return smallest[count - 1] + 1  # the count-th smallest is held out


def _has_text(doc) -> bool:
    return bool(doc[1])


class _SplitFn(beam.DoFn):
    """`(doc_id, lines)` -> the main (training) output or `EVAL`.

    Documents without lines stay in training (the next stage counts and
    drops them as empty); they are never held out in place of text."""

    def __init__(self, seed: int):
        self._seed = seed

    def process(self, doc, bound):
        lines = doc[1]
        if lines and hold_out_hash(self._seed, text.fingerprint(lines)) < bound:
            yield beam.pvalue.TaggedOutput(EVAL, doc)
        else:
            yield doc


class _CountFn(beam.DoFn):
    """Counts elements as they pass. Its own step, not in `_SplitFn`:
    BundleBasedDirectRunner drops the metrics of a DoFn that waited for a
    side input (Beam 2.x, measured), and the split waits for its bound."""

    def __init__(self, name: str):
        self._name = name

    def setup(self):
        self._count = text.counter_fn(NAMESPACE)

    def process(self, doc):
        self._count(self._name)
        yield doc


class HoldOutDocuments(beam.PTransform):
    """Splits documents into training and held-out documents.

    Input: `(doc_id: str, lines: list[str])` per document (see
    `corpus.ReadDocuments`). Output: a dict of two PCollections, `[TRAIN]`
    the training documents and `[EVAL]` the held-out ones, elements
    unchanged. Counters `documents-held-out` and
    `documents-kept-for-training`.

    Args:
        eval_documents: a count `N >= 1` (the `N` distinct documents with
            the smallest hold-out hashes) or a fraction in `(0, 1)`.
        seed: the job seed.
        reread: for a count, a PTransform that reads the same documents
            again (e.g. another `corpus.ReadDocuments`), applied to the
            pipeline to compute the bound; None hashes the input itself
            (which then waits, in memory on local runners, for the bound).
    """

    def __init__(
        self,
        *,
        eval_documents: int | float,
        seed: int,
        reread: beam.PTransform | None = None,
    ):
        super().__init__()
        value = parse_eval_documents(eval_documents)
        if not value:
            raise ValueError("eval_documents must be a count >= 1 or a fraction > 0")
        self._eval_documents = value
        self._seed = seed
        self._reread = reread

    def expand(self, docs):
        value, seed = self._eval_documents, self._seed
        if isinstance(value, float):
            bound = fraction_bound(value)
        else:
            # The count-th smallest hash over the corpus: one global
            # combine of one int per document (k = count + 1, to know
            # that something is left to train on).
            hashed = docs
            if self._reread is not None:
                hashed = docs.pipeline | "ReadForHashes" >> self._reread
            bound = beam.pvalue.AsSingleton(
                hashed
                | "WithText" >> beam.Filter(_has_text)
                | "HashDocuments"
                >> beam.Map(lambda d: hold_out_hash(seed, text.fingerprint(d[1])))
                | "SmallestHashes" >> beam.CombineGlobally(SmallestDistinct(value + 1))
                | "Bound" >> beam.Map(count_bound, value)
            )
        split = docs | "Split" >> beam.ParDo(_SplitFn(seed), bound).with_outputs(
            EVAL, main=TRAIN
        )
        return {
            TRAIN: split[TRAIN] | "CountKept" >> beam.ParDo(_CountFn(DOCUMENTS_KEPT)),
            EVAL: split[EVAL]
            | "CountHeldOut" >> beam.ParDo(_CountFn(DOCUMENTS_HELD_OUT)),
        }
