"""Tests for pipelines.wordpiece_vocab: learning from a word -> count table."""

import collections
import random

import pytest

from configs import features
from configs.tokenization import build_tokenizer
from pipelines import wordpiece_vocab
from pipelines.wordpiece_vocab import VocabError, learn_vocab

# A few sentences of the conftest corpus, plus words sharing affixes.
CORPUS_TEXT = """\
The quick brown fox jumps over the lazy dog.
It was not amused by the fox at all.
The sea was calm and the sky was blue.
Boats sailed out of the harbor in the morning.
"""


def _table():
    """A word -> count table from CORPUS_TEXT, with varied counts."""
    counts = collections.Counter()
    for i, word in enumerate(CORPUS_TEXT.lower().replace(".", " . ").split()):
        counts[word] += 1 + i % 3
    for word in "unhappy happiness happily sadly sadness darkness".split():
        counts[word] += 4
    return dict(counts)


def test_reserved_then_unused_then_alphabet_and_suffix_forms():
    vocab = learn_vocab(_table(), vocab_size=150, num_unused=3)
    tokens = vocab.tokens
    assert tokens[:5] == list(features.RESERVED_TOKENS)
    assert tokens[5:8] == ["[unused0]", "[unused1]", "[unused2]"]
    for token in features.RESERVED_TOKENS + ("[unused0]",):
        assert tokens.count(token) == 1
    assert len(tokens) == len(set(tokens))
    for char in set("".join(_table())):
        assert char in tokens and "##" + char in tokens
    assert sorted(vocab.alphabet) == sorted(set("".join(_table())))


def test_exact_size_when_the_corpus_has_enough_pieces():
    vocab = learn_vocab(_table(), vocab_size=80)
    assert len(vocab.tokens) == 80
    assert vocab.learner_size >= 80


def test_small_corpus_stops_at_what_the_learner_can_reach():
    vocab = learn_vocab({"ab": 3, "ba": 1}, vocab_size=100)
    # Everything at threshold 1: a, b, ##a, ##b and the words' substrings.
    assert len(vocab.tokens) < 100
    assert {"a", "b", "##a", "##b", "ab"} <= set(vocab.tokens)


def test_deterministic_whatever_the_input_order():
    table = _table()
    items = list(table.items())
    random.Random(0).shuffle(items)
    # The same counts split into partial sums, as two workers would give.
    split = [(w, c - 1) for w, c in items] + [(w, 1) for w, c in items]
    first = learn_vocab(table, vocab_size=75).tokens
    assert learn_vocab(items, vocab_size=75).tokens == first
    assert learn_vocab(split, vocab_size=75).tokens == first


def test_learned_vocab_tokenizes_the_corpus_without_unk():
    tokens = learn_vocab(_table(), vocab_size=75).tokens
    tokenizer = build_tokenizer(tokens, do_lower_case=True)
    ids = tokenizer.tokenize(CORPUS_TEXT.splitlines()).flat_values.numpy()
    assert tokens.index(features.UNK) not in ids.tolist()


def test_rare_characters_beyond_max_unique_chars_are_left_out():
    table = {"aaa": 10, "b": 1}
    vocab = learn_vocab(table, vocab_size=20, max_unique_chars=1)
    assert vocab.alphabet == ["a"]
    assert "b" not in vocab.tokens


def test_empty_table_is_an_error():
    with pytest.raises(VocabError, match="no words"):
        learn_vocab({}, vocab_size=100)


def test_alphabet_that_does_not_fit_is_an_error():
    with pytest.raises(VocabError, match="alphabet of 26 characters"):
        learn_vocab({"abcdefghijklmnopqrstuvwxyz": 1}, vocab_size=40)


@pytest.mark.parametrize(
    "reserved, message",
    [
        (["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "lack \\[MASK\\]"),
        (["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"], "first"),
        (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"], "twice"),
    ],
)
def test_bad_reserved_tokens(reserved, message):
    with pytest.raises(VocabError, match=message):
        wordpiece_vocab.control_tokens(reserved, 0)
