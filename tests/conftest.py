"""Shared fixtures: an inline vocabulary, a tiny model config, a temp corpus.

Three small helpers, no harness. Slow tests are marked `@pytest.mark.slow`
and run only with `--run_slow` (keras-hub's `--run_large` pattern).
"""

import os

import pytest

from configs.schema import ModelConfig
from testdata import (  # noqa: F401 (re-exported)
    CORPUS_TEXT,
    SHARED_DATA,
    WORDS,
    make_vocab_tokens,
    shared_data,
)

# `pretrain.precision: auto` times both precisions once per model shape on a
# bf16-capable CPU; the tests' many tiny shapes would each pay for it. Its
# own tests turn it on (tests/model/test_precision_probe.py).
os.environ.setdefault("BERT_SENTIMENT_PRECISION_PROBE", "off")


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
