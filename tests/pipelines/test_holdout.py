"""HoldOutDocuments: whole documents, chosen by a seeded content hash, an
exact count or a fraction; the flag's parsing."""

import os
import pickle
import shutil
import tempfile

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import holdout, text
from pipelines.errors import _failure_line

DOCS = [
    ["The quick brown fox jumps.", "It was not amused."],
    ["A second document starts here.", "It talks about the sea."],
    ["Short third document.", "Second line of it."],
    ["A fourth one, about boats.", "They came back at night."],
    ["The fifth and last.", "It ends here."],
]


def _doc(lines, doc_id=None):
    """The element shape HoldOutDocuments reads: `(doc_id, lines)`."""
    return (doc_id or f"corpus.txt:{len(lines[0])}", list(lines))


def _hash(lines, seed):
    return holdout.hold_out_hash(seed, text.fingerprint(list(lines)))


def _many(n):
    return [(f"doc:{i}", [f"line {i} of a document"]) for i in range(n)]


def _dump(elements, path):
    with open(path, "wb") as f:
        pickle.dump(elements, f)


def _split(elements, **kwargs):
    """Runs the transform; returns ((train, eval) lists, counters)."""
    out = tempfile.mkdtemp()
    with TestPipeline() as p:
        split = p | beam.Create(elements) | holdout.HoldOutDocuments(**kwargs)
        for name, pcoll in (
            ("train", split[holdout.TRAIN]),
            ("eval", split[holdout.EVAL]),
        ):
            _ = (
                pcoll
                | f"Collect{name}" >> beam.combiners.ToList()
                | f"Dump{name}" >> beam.Map(_dump, os.path.join(out, name))
            )
    counters = {
        c.key.metric.name: c.committed
        for c in p.result.metrics().query(MetricsFilter())["counters"]
        if c.key.metric.namespace == holdout.NAMESPACE
    }
    got = []
    for name in ("train", "eval"):
        with open(os.path.join(out, name), "rb") as f:
            got.append(pickle.load(f))
    shutil.rmtree(out)
    return tuple(got), counters


def test_count_holds_out_the_smallest_hashes_whole_and_once():
    # A copy of one text (another place in the corpus), and a document
    # without lines, which stays in training (it is dropped as empty there).
    copy = _doc(DOCS[3], "other.txt:0")
    elements = [_doc(d) for d in DOCS] + [copy, ("empty.jsonl:0", [])]
    by_hash = sorted(DOCS, key=lambda d: _hash(d, 7))
    held, kept = by_hash[:2], by_hash[2:]
    want_eval = [_doc(d) for d in held] + ([copy] if DOCS[3] in held else [])
    want_train = [_doc(d) for d in kept] + ([copy] if DOCS[3] in kept else [])
    want_train.append(("empty.jsonl:0", []))
    with TestPipeline() as p:
        split = (
            p
            | beam.Create(elements)
            | holdout.HoldOutDocuments(eval_documents=2, seed=7)
        )
        assert_that(split[holdout.EVAL], equal_to(want_eval), label="HeldOut")
        assert_that(split[holdout.TRAIN], equal_to(want_train), label="Kept")


def test_exact_count_over_many_documents_and_counters():
    elements = _many(1000)
    (train, held), counters = _split(elements, eval_documents=37, seed=3)
    assert len(held) == 37 and len(train) == 963
    assert not {d[0] for d in held} & {d[0] for d in train}
    hashes = sorted(_hash(d[1], 3) for d in elements)
    assert max(_hash(d[1], 3) for d in held) == hashes[36]
    assert counters == {
        holdout.DOCUMENTS_HELD_OUT: 37,
        holdout.DOCUMENTS_KEPT: 963,
    }


def test_count_bound_from_a_second_read_equals_the_input_itself():
    elements = _many(200)
    (_, held), _ = _split(elements, eval_documents=9, seed=3)
    (_, reread), _ = _split(
        elements, eval_documents=9, seed=3, reread=beam.Create(elements[::-1])
    )
    assert sorted(held) == sorted(reread) and len(held) == 9


def test_fraction_is_honoured_within_tolerance():
    n = 4000
    elements = _many(n)
    (train, held), counters = _split(elements, eval_documents=0.1, seed=11)
    # Binomial(4000, 0.1): sd 19; a fixed seed, so no flakiness either.
    assert abs(len(held) - 400) < 4 * 19, len(held)
    assert len(held) + len(train) == n
    assert counters[holdout.DOCUMENTS_HELD_OUT] == len(held)
    bound = holdout.fraction_bound(0.1)
    assert all(_hash(d[1], 11) < bound for d in held)
    assert all(_hash(d[1], 11) >= bound for d in train)


def test_same_seed_same_split_other_seed_other_split():
    elements = _many(300)

    def held(seed, docs=elements):
        (_, h), _ = _split(docs, eval_documents=20, seed=seed)
        return sorted(d[0] for d in h)

    first = held(1)
    assert held(1) == first
    assert held(2) != first
    # The order the runner delivers the documents in does not matter.
    assert held(1, elements[::-1]) == first


def test_count_that_leaves_nothing_to_train_on_fails_with_one_line():
    copy = _doc(DOCS[0], "other.txt:0")
    elements = [_doc(d) for d in DOCS] + [copy]  # 5 distinct texts
    with pytest.raises(Exception) as e:
        _split(elements, eval_documents=5, seed=1)
    line = _failure_line(e.value)
    assert line is not None and "nothing would be left to train on" in line
    assert "corpus has 5 document(s)" in line
    (train, held), _ = _split(elements, eval_documents=4, seed=1)
    texts = lambda docs: {tuple(d[1]) for d in docs}  # noqa: E731
    assert len(texts(held)) == 4 and len(texts(train)) == 1
    assert len(held) + len(train) == 6  # the copy went where its text went
    assert not texts(held) & texts(train)


def test_smallest_distinct_combines_like_sorted_set():
    fn = holdout.SmallestDistinct(3)
    parts = [[5, 1, 1, 9], [1, 2, 7, 7, 3], []]
    accs = []
    for part in parts:
        acc = fn.create_accumulator()
        for v in part:
            acc = fn.add_input(acc, v)
        accs.append(acc)
    assert fn.extract_output(fn.merge_accumulators(accs)) == [1, 2, 3]
    assert fn.extract_output(fn.create_accumulator()) == []


@pytest.mark.parametrize(
    "value, parsed",
    [("0", 0), ("0.0", 0), ("1", 1), ("250", 250), ("0.01", 0.01), (".5", 0.5)],
)
def test_parse_eval_documents(value, parsed):
    got = holdout.parse_eval_documents(value)
    assert got == parsed and type(got) is type(parsed)


@pytest.mark.parametrize(
    "value, message",
    [
        ("-3", "is negative"),
        ("-0.1", "at least 0 and below 1"),
        ("1.0", "below 1"),
        ("1.5", "below 1"),
        ("nan", "below 1"),
        ("ten", "neither a count"),
    ],
)
def test_bad_eval_documents_is_one_line(value, message):
    with pytest.raises(ValueError) as e:
        holdout.parse_eval_documents(value)
    assert message in str(e.value) and "\n" not in str(e.value)
