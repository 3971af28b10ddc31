"""Tests for pipelines.word_counts: count_batch and the CountWords transform."""

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import word_counts
from pipelines.word_counts import CountWords, count_batch

LINES = [
    "The cat, the DOG.",
    "Café déjà vu",
    "",
    "the end",
]


def _counters(result):
    query = result.metrics().query(
        MetricsFilter().with_namespace(word_counts.NAMESPACE)
    )
    return {c.key.metric.name: c.committed for c in query["counters"]}


def _run(lines, matcher, **kwargs):
    """Runs CountWords on `lines`, checks the output; returns the counters."""
    pipeline = TestPipeline()
    out = pipeline | beam.Create(lines) | CountWords(**kwargs)
    assert_that(out, matcher)
    result = pipeline.run()
    result.wait_until_finish()
    return _counters(result)


def test_count_batch_drops_too_long_words_and_counts():
    counted = {}

    def inc(name, value):
        counted[name] = counted.get(name, 0) + value

    words = [b"a", b"bb", b"a", b"ccc", "é".encode()]
    got = count_batch(words, max_word_length=2, counter_inc_fn=inc)
    assert got == {"a": 2, "bb": 1, "é": 1}  # length in characters, not bytes
    assert counted == {
        word_counts.WORDS_COUNTED: 5,
        word_counts.WORDS_TOO_LONG: 1,
    }


def test_count_words_lower_cases_splits_punctuation_and_strips_accents():
    expected = [
        (",", 1),
        (".", 1),
        ("cafe", 1),
        ("cat", 1),
        ("deja", 1),
        ("dog", 1),
        ("end", 1),
        ("the", 3),
        ("vu", 1),
    ]
    with TestPipeline() as p:
        out = p | beam.Create(LINES) | CountWords(do_lower_case=True)
        assert_that(out, equal_to(expected))


def test_flushing_partial_counts_early_gives_the_same_counts():
    lines = LINES * 50
    expected = [("the", 150), ("cat", 50), ("dog", 50), (",", 50), (".", 50)]
    expected += [("cafe", 50), ("deja", 50), ("vu", 50), ("end", 50)]
    counters = _run(lines, equal_to(expected), max_batch_chars=30, max_pending_words=1)
    assert counters[word_counts.WORDS_COUNTED] == 11 * 50


def test_count_words_cased_keeps_case_and_accents():
    def check(got):
        words = dict(got)
        assert words["The"] == 1 and words["the"] == 2
        assert "Café" in words and "DOG" in words

    _run(LINES, check, do_lower_case=False)


def test_count_words_counters_and_filters():
    counters = _run(
        LINES + ["supercalifragilistic the"],
        equal_to([("the", 4)]),
        min_count=2,
        max_word_length=10,
    )
    assert counters[word_counts.LINES_COUNTED] == 5
    assert counters[word_counts.WORDS_COUNTED] == 13
    assert counters[word_counts.WORDS_TOO_LONG] == 1
    # cat , dog . cafe deja vu end: 8 words seen once, below min_count=2.
    assert counters[word_counts.UNIQUE_WORDS_BELOW_MIN_COUNT] == 8
    assert counters[word_counts.WORDS_BELOW_MIN_COUNT] == 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_count": 0},
        {"max_word_length": 0},
        {"max_batch_chars": 0},
        {"max_pending_words": 0},
    ],
)
def test_count_words_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        CountWords(**kwargs)
