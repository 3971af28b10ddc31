"""Counting words for vocabulary learning: `CountWords`.

Words are what `configs.tokenization.build_word_splitter` yields: the
tensorflow-text `BasicTokenizer` pre-tokenization (and, with
`do_lower_case`, the lower-casing, NFD and accent stripping) that
`FastBertTokenizer` applies before WordPiece. One code path, so a learned
vocabulary sees exactly the words the data job and the served model will
see.

Counting is a distributed Beam combine: each batch of lines is split and
pre-aggregated in the worker (`collections.Counter`), then
`CombinePerKey(sum)` merges the partial counts across workers. Memory per
worker is bounded by the distinct words of its batches, not by the corpus.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from configs.tokenization import build_word_splitter

# === Counters (namespace = the transform's class name) ===
NAMESPACE = "CountWords"
LINES_COUNTED = "lines-counted"
WORDS_COUNTED = "words-counted"
WORDS_TOO_LONG = "words-dropped-too-long"
UNIQUE_WORDS_BELOW_MIN_COUNT = "unique-words-dropped-below-min-count"
WORDS_BELOW_MIN_COUNT = "words-dropped-below-min-count"
COUNTER_NAMES = (
    LINES_COUNTED,
    WORDS_COUNTED,
    WORDS_TOO_LONG,
    UNIQUE_WORDS_BELOW_MIN_COUNT,
    WORDS_BELOW_MIN_COUNT,
)

# The learner's own default (`wordpiece_tokenizer_learner_lib.learn`'s
# `max_token_length`): longer words are split to [UNK]-prone pieces anyway.
DEFAULT_MAX_WORD_LENGTH = 50
# Lines are batched by characters (a few long lines must not make a huge
# batch): ~7,000 typical lines per BasicTokenizer call amortize its
# per-call cost; see benchmarks/vocab.py.
DEFAULT_MAX_BATCH_CHARS = 1 << 20
DEFAULT_MAX_PENDING_WORDS = 200_000  # distinct words held per worker


def _no_count(name: str, value: int = 1) -> None:
    del name, value


def count_batch(
    words: Iterable[bytes],
    *,
    max_word_length: int,
    counter_inc_fn: Callable[[str, int], None] = _no_count,
) -> dict[str, int]:
    """Counts the words of one batch.

    Args:
        words: UTF-8 encoded words, as the word splitter's `flat_values`.
        max_word_length: longer words (in characters, as the learner
            measures them) are counted as dropped and left out.
        counter_inc_fn: `(counter name, increment)`, e.g. a Beam counter.

    Returns:
        {word: occurrences in this batch}.
    """
    # Count the bytes first: decoding each distinct word once is much
    # cheaper than decoding every occurrence.
    raw_counts = collections.Counter(words)
    counts = {}
    total = too_long = 0
    for raw, n in raw_counts.items():
        word = raw.decode("utf-8", errors="replace")
        total += n
        if len(word) > max_word_length:
            too_long += n
            continue
        counts[word] = counts.get(word, 0) + n
    counter_inc_fn(WORDS_COUNTED, total)
    if too_long:
        counter_inc_fn(WORDS_TOO_LONG, too_long)
    return counts


def _beam_count(name: str, value: int = 1) -> None:
    Metrics.counter(NAMESPACE, name).inc(value)


class _SplitAndCountFn(beam.DoFn):
    """Input: list[str] lines (one batch). Output: `(word, count)` partials.

    Counts are combined across the batches of a bundle before they leave the
    worker ("in-mapper combining"): a bundle of a 30 MB corpus emits each
    distinct word once instead of once per batch, which cuts the elements the
    shuffle sees by an order of magnitude. At most `max_pending_words`
    distinct words are held; beyond that the partial counts are flushed.
    """

    def __init__(
        self, *, do_lower_case: bool, max_word_length: int, max_pending_words: int
    ):
        self._do_lower_case = do_lower_case
        self._max_word_length = max_word_length
        self._max_pending_words = max_pending_words
        self._splitter = None
        self._pending = {}  # window -> Counter

    def setup(self):
        # Built once per worker: loading TF ops per element would dominate.
        # A traced graph: cheaper per batch than eager ragged-tensor ops.
        import tensorflow as tf

        splitter = build_word_splitter(self._do_lower_case)
        self._splitter = tf.function(
            lambda lines: splitter.tokenize(lines).flat_values,
            input_signature=[tf.TensorSpec([None], tf.string)],
        )

    def start_bundle(self):
        self._pending = {}

    def process(self, lines: list[str], window=beam.DoFn.WindowParam):
        _beam_count(LINES_COUNTED, len(lines))
        words = self._splitter(lines).numpy().tolist()
        counts = count_batch(
            words,
            max_word_length=self._max_word_length,
            counter_inc_fn=_beam_count,
        )
        pending = self._pending.setdefault(window, collections.Counter())
        pending.update(counts)
        if len(pending) > self._max_pending_words:
            del self._pending[window]
            yield from pending.items()

    def finish_bundle(self):
        for window, pending in self._pending.items():
            for word_count in pending.items():
                yield WindowedValue(word_count, window.max_timestamp(), [window])
        self._pending = {}


def _batch_weight(line: str) -> int:
    return len(line) + 1  # empty lines still cost a little


def _keep_frequent(word_count: tuple[str, int], min_count: int) -> bool:
    if word_count[1] >= min_count:
        return True
    _beam_count(UNIQUE_WORDS_BELOW_MIN_COUNT)
    _beam_count(WORDS_BELOW_MIN_COUNT, word_count[1])
    return False


class CountWords(beam.PTransform):
    """Counts the pre-tokenized words of text lines.

    Input: PCollection of `str` lines. Output: PCollection of
    `(word: str, count: int)`, one element per distinct word seen at least
    `min_count` times (words, not wordpieces; lower-cased and accent-stripped
    when `do_lower_case`).

    Counters (namespace `CountWords`): `lines-counted`, `words-counted`
    (every word the splitter produced), `words-dropped-too-long`,
    `unique-words-dropped-below-min-count`, `words-dropped-below-min-count`.

    Args:
        do_lower_case: normalization of `configs.tokenization`; must match
            the tokenizer that will use the vocabulary.
        max_word_length: words longer than this many characters are dropped.
        min_count: words seen fewer times in the whole corpus are dropped.
        max_batch_chars: most characters per BasicTokenizer call (a longer
            line is a batch of its own).
        max_pending_words: most distinct words a worker combines before
            emitting partial counts (bounds its memory).
    """

    def __init__(
        self,
        *,
        do_lower_case: bool = True,
        max_word_length: int = DEFAULT_MAX_WORD_LENGTH,
        min_count: int = 1,
        max_batch_chars: int = DEFAULT_MAX_BATCH_CHARS,
        max_pending_words: int = DEFAULT_MAX_PENDING_WORDS,
    ):
        super().__init__()
        if max_word_length < 1:
            raise ValueError(f"max_word_length must be >= 1, got {max_word_length}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_batch_chars < 1:
            raise ValueError(f"max_batch_chars must be >= 1, got {max_batch_chars}")
        if max_pending_words < 1:
            raise ValueError(f"max_pending_words must be >= 1, got {max_pending_words}")
        self._do_lower_case = bool(do_lower_case)
        self._max_word_length = max_word_length
        self._min_count = min_count
        self._max_batch_chars = max_batch_chars
        self._max_pending_words = max_pending_words

    def expand(self, lines):
        # Batch lines: one tensorflow-text call per batch, not per string.
        batches = lines | "BatchLines" >> beam.BatchElements(
            min_batch_size=min(1 << 16, self._max_batch_chars),
            max_batch_size=self._max_batch_chars,
            element_size_fn=_batch_weight,
        )
        # Split into words and pre-aggregate inside each bundle.
        partial_counts = batches | "SplitAndCount" >> beam.ParDo(
            _SplitAndCountFn(
                do_lower_case=self._do_lower_case,
                max_word_length=self._max_word_length,
                max_pending_words=self._max_pending_words,
            )
        )
        # Merge partial counts across batches and workers (combiner lifting).
        word_to_count = partial_counts | "SumCounts" >> beam.CombinePerKey(sum)
        # Drop the corpus-wide rare words, counting what is dropped.
        return word_to_count | "DropRare" >> beam.Filter(
            _keep_frequent, self._min_count
        )
