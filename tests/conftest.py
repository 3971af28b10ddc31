"""Shared fixtures: an inline vocabulary, a tiny model config, a temp corpus.

Three small helpers, no harness. Slow tests are marked `@pytest.mark.slow`
and run only with `--run_slow` (keras-hub's `--run_large` pattern).
"""

import string

import pytest

from configs.schema import ModelConfig
from testdata import SHARED_DATA, shared_data  # noqa: F401 (re-exported)

CORPUS_TEXT = """\
The quick brown fox jumps over the lazy dog.
It was not amused by the fox at all.
The dog went back to sleep under the old tree.
Later that day the fox came back again.

A second document starts here.
It talks about the weather and the sea.
The sea was calm and the sky was blue.
Boats sailed out of the harbor in the morning.
They came back at night with many fish.

Short third document with two lines.
This is the second line of it.
"""

WORDS = sorted(
    set(
        w.strip(".,").lower()
        for w in CORPUS_TEXT.split()
        + "good bad great movie film terrible wonderful not".split()
    )
)


def make_vocab_tokens(words=WORDS, num_unused=3):
    """Inline WordPiece vocab: specials, [unusedN], characters, ##chars, words."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    unused = [f"[unused{i}]" for i in range(num_unused)]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    suffixes = ["##" + c for c in string.ascii_lowercase + string.digits]
    seen = set(specials + unused + chars + suffixes)
    extra = [w for w in words if w not in seen]
    return specials + unused + chars + suffixes + extra


def pytest_addoption(parser):
    parser.addoption(
        "--run_slow", action="store_true", default=False, help="run slow tests"
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test, run with --run_slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run_slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run_slow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def vocab_tokens():
    return make_vocab_tokens()


@pytest.fixture
def vocab_file(tmp_path, vocab_tokens):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab_tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS_TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture
def tiny_model_config(vocab_tokens):
    return ModelConfig(
        vocabulary_size=len(vocab_tokens),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=64,
        dropout=0.0,
    )
