"""Property tests of create_pairs / truncate_seq_pair over many draws."""

import collections
import random

import pytest

from configs import features
from pipelines import sentence_pairs, text


def _doc(rng, doc_index, num_sentences):
    # Token ids encode (document, sentence, position) so tests can tell
    # where every token came from: 1_000_000 * doc + 1000 * sentence + pos.
    return [
        [1_000_000 * doc_index + 1000 * s + p for p in range(rng.randint(1, 30))]
        for s in range(num_sentences)
    ]


def _corpus(seed=0, num_docs=12):
    rng = random.Random(seed)
    return [_doc(rng, d, rng.randint(1, 15)) for d in range(num_docs)]


def _contiguous(tokens, document):
    flat = [t for s in document for t in s]
    start = flat.index(tokens[0])
    return flat[start : start + len(tokens)] == tokens


def _draw_pairs(task, draws=300, max_seq_length=64, short_seq_prob=0.1):
    docs = _corpus()
    counts = collections.Counter()
    out = []
    for n in range(draws):
        index = n % len(docs)
        rng = random.Random(n)
        others = docs[:index] + docs[index + 1 :]
        pairs = sentence_pairs.create_pairs(
            docs[index],
            others,
            rng,
            max_seq_length=max_seq_length,
            short_seq_prob=short_seq_prob,
            sentence_task=task,
            counter_inc_fn=lambda name, v=1: counts.update({name: v}),
        )
        out.extend((index, p) for p in pairs)
    return out, counts


def test_nsp_pairs_respect_lengths_and_label_semantics():
    pairs, counts = _draw_pairs("nsp")
    assert len(pairs) > 800
    labels = collections.Counter(p.label for _, p in pairs)
    # Label 1 also covers every one-sentence chunk, so a little over half.
    assert 0.4 < labels[features.NOT_NEXT] / len(pairs) < 0.7
    for index, p in pairs:
        assert p.tokens_a and p.tokens_b
        assert len(p.tokens_a) + len(p.tokens_b) <= 64 - 3
        assert all(t // 1_000_000 == index for t in p.tokens_a)
        b_docs = {t // 1_000_000 for t in p.tokens_b}
        if p.label == features.IS_NEXT:
            # B follows A in the same document.
            assert b_docs == {index}
            assert max(p.tokens_a) < min(p.tokens_b)
        else:
            assert b_docs and index not in b_docs and len(b_docs) == 1
    assert counts[sentence_pairs.PAIRS_TRUNCATED] > 0


def test_nsp_actual_next_is_contiguous_without_truncation():
    docs = _corpus(1)
    for n in range(200):
        rng = random.Random(n)
        pairs = sentence_pairs.create_pairs(
            docs[n % 12], docs, rng, max_seq_length=4000, short_seq_prob=0.5
        )
        for p in pairs:
            if p.label == features.IS_NEXT:
                assert _contiguous(p.tokens_a + p.tokens_b, docs[n % 12])


def test_sop_swaps_half_and_keeps_one_document():
    pairs, _ = _draw_pairs("sop")
    swapped = 0
    for index, p in pairs:
        assert {t // 1_000_000 for t in p.tokens_a + p.tokens_b} == {index}
        assert len(p.tokens_a) + len(p.tokens_b) <= 61
        if p.label == features.NOT_NEXT:
            swapped += 1
            assert max(p.tokens_b) < min(p.tokens_a)
        else:
            assert max(p.tokens_a) < min(p.tokens_b)
    assert 0.45 < swapped / len(pairs) < 0.55


def test_one_sentence_document_without_other_documents_is_counted():
    counts = collections.Counter()
    pairs = sentence_pairs.create_pairs(
        [[1, 2, 3]],
        [],
        random.Random(0),
        max_seq_length=16,
        short_seq_prob=0.0,
        counter_inc_fn=lambda name, v=1: counts.update({name: v}),
    )
    assert pairs == []
    assert counts[sentence_pairs.CHUNKS_DROPPED_NO_OTHER] == 1


def test_same_rng_seed_gives_same_pairs():
    docs = _corpus(2)
    a = sentence_pairs.create_pairs(
        docs[0],
        docs[1:],
        text.make_rng(7, 123, 0),
        max_seq_length=32,
        short_seq_prob=0.1,
    )
    b = sentence_pairs.create_pairs(
        docs[0],
        docs[1:],
        text.make_rng(7, 123, 0),
        max_seq_length=32,
        short_seq_prob=0.1,
    )
    assert a == b and a


@pytest.mark.parametrize("max_tokens", [2, 5, 17])
def test_truncate_seq_pair_longest_first_from_both_ends(max_tokens):
    fronts = backs = 0
    for n in range(300):
        rng = random.Random(n)
        a, b = list(range(rng.randint(1, 20))), list(
            range(100, 100 + rng.randint(1, 20))
        )
        a0, b0 = list(a), list(b)
        removed = text.truncate_seq_pair(a, b, max_tokens, rng)
        assert len(a) + len(b) == min(max_tokens, len(a0) + len(b0))
        assert removed == len(a0) + len(b0) - len(a) - len(b)
        assert a and b
        for cut, orig in ((a, a0), (b, b0)):
            k = orig.index(cut[0])
            assert orig[k : k + len(cut)] == cut  # a contiguous middle part
            fronts += k > 0
            backs += k + len(cut) < len(orig)
        if removed:
            # Longest first: the lengths end up within one of each other
            # unless the shorter one was never touched.
            assert abs(len(a) - len(b)) <= 1 or min(len(a0), len(b0)) in (
                len(a),
                len(b),
            )
    assert fronts > 50 and backs > 50
