"""End-to-end tests for the `python -m pipelines.vocab` job (DirectRunner)."""

import gzip
import importlib.util
import json
import os

import pytest

from configs import features
from configs.tokenization import build_tokenizer, build_word_splitter
from pipelines import vocab

from testdata import shared_data

# Inline training text: varied enough that ~120 tokens are reachable.
TRAIN_TEXT = """\
The quick brown fox jumps over the lazy dog.
It was not amused by the fox at all, and the dog slept on.
The dog went back to sleep under the old tree in the garden.
Later that day the fox came back again, hungrier than before.

A second document starts here, talking about the weather.
The sea was calm and the sky was blue over the harbour.
Boats sailed out of the harbour in the morning light.
They came back at night with many fish and tired sailors.
"""
HELD_OUT_TEXT = """\
The tired fox slept under a tree by the sea.
Sailors talked about the morning weather in the garden.
"""


def _args(corpus, output, vocab_size=150, *extra):
    return [
        f"--input={corpus}",
        f"--output={output}",
        f"--vocab_size={vocab_size}",
        *extra,
    ]


def _unk_rate(tokens, lines):
    """Fraction of wordpieces that are [UNK] when `tokens` tokenize `lines`."""
    ids = build_tokenizer(tokens).tokenize(lines).flat_values.numpy()
    return (ids == tokens.index(features.UNK)).sum() / max(len(ids), 1)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """One run of the job on the inline corpus, shared by several tests."""
    root = tmp_path_factory.mktemp("vocab")
    corpus = root / "train.txt"
    corpus.write_text(TRAIN_TEXT, encoding="utf-8")
    output = root / "vocab.txt"
    sidecar = vocab.run(_args(corpus, output, 110, "--num_unused=2"))
    return str(corpus), str(output), sidecar


def test_reserved_tokens_once_at_the_front_then_unused(learned):
    _, output, _ = learned
    tokens = features.read_vocab(output)
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokens[5:7] == ["[unused0]", "[unused1]"]
    assert len(tokens) == len(set(tokens))
    assert not any(features.is_special_token(t) for t in tokens[7:])


def test_requested_size_and_sidecar(learned):
    corpus, output, sidecar = learned
    tokens = features.read_vocab(output)
    assert len(tokens) == 110  # enough distinct pieces: the exact size
    with open(output + ".json", encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(sidecar))
    assert on_disk["vocab_size"] == 110
    assert on_disk["vocab_sha256"] == features.vocab_sha256(output)
    assert on_disk["corpus"]["lines"] == 8
    assert on_disk["corpus"]["documents"] == 2
    words = build_word_splitter().tokenize(TRAIN_TEXT.splitlines())
    assert on_disk["corpus"]["words"] == words.flat_values.shape[0]
    assert on_disk["options"]["num_unused"] == 2
    assert on_disk["inputs"] == [corpus]


def test_held_out_text_has_no_unk_and_special_ids_by_name(learned):
    _, output, sidecar = learned
    tokens = features.read_vocab(output)
    # Ids differ from Google's (101/102/103): found by name, that is fine.
    assert sidecar["special_token_ids"] == features.special_token_ids(tokens)
    assert _unk_rate(tokens, HELD_OUT_TEXT.splitlines()) == 0.0


def test_same_corpus_gives_byte_identical_vocab(learned, tmp_path):
    corpus, output, _ = learned
    again = tmp_path / "vocab.txt"
    # Two threads split the work differently; the vocabulary must not move.
    vocab.run(
        _args(corpus, again, 110, "--num_unused=2")
        + ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    )
    with open(output, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


def test_jsonl_and_gzip_inputs_count_undecodable_lines(tmp_path):
    lines = TRAIN_TEXT.splitlines()
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        json.dumps({"body": "\n".join(lines[:4])}) + "\n", encoding="utf-8"
    )
    gz = tmp_path / "more.txt.gz"
    with gzip.open(gz, "wb") as f:
        f.write("\n".join(lines[5:]).encode() + b"\nbad \xff byte\n")
    output = tmp_path / "vocab.txt"
    sidecar = vocab.run(_args(f"{jsonl},{gz}", output, 100, "--text_field=body"))
    assert sidecar["corpus"]["lines_undecodable"] == 1
    assert sidecar["corpus"]["lines"] == 4 + 4 + 1
    assert len(features.read_vocab(str(output))) == 100


def test_cased_vocab_keeps_capitals(corpus_file, tmp_path):
    output = tmp_path / "cased.txt"
    sidecar = vocab.run(_args(corpus_file, output, 100, "--do_lower_case=false"))
    tokens = features.read_vocab(str(output))
    assert sidecar["options"]["do_lower_case"] is False
    assert "T" in tokens and "##T" in tokens
    lines = ["The Boats came back."]
    ids = build_tokenizer(tokens, do_lower_case=False).tokenize(lines)
    assert tokens.index(features.UNK) not in ids.flat_values.numpy().tolist()


def _expect_error(capsys, argv, message, output=None, code=2):
    with pytest.raises(SystemExit) as exit_info:
        vocab.main(argv)
    assert exit_info.value.code == code
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert err and err[-1].startswith("error: ") and message in err[-1], err
    if output is not None:
        assert not os.path.exists(output)
        assert not os.path.exists(str(output) + ".json")


def test_vocab_size_below_reserved_tokens_is_an_error(capsys, corpus_file, tmp_path):
    out = tmp_path / "v.txt"
    _expect_error(
        capsys,
        _args(corpus_file, out, 8, "--num_unused=2"),
        "--vocab_size=8 is smaller",
        out,
    )


def test_alphabet_that_does_not_fit_is_an_error(capsys, corpus_file, tmp_path):
    out = tmp_path / "v.txt"  # passes the static bound, fails after counting
    _expect_error(capsys, _args(corpus_file, out, 12), "alphabet of", out)


def test_empty_corpus_is_an_error_and_writes_nothing(capsys, tmp_path):
    corpus = tmp_path / "blank.txt"
    corpus.write_text("\n  \n\n", encoding="utf-8")
    out = tmp_path / "v.txt"
    _expect_error(capsys, _args(corpus, out), "has no words", out, code=1)


@pytest.mark.parametrize(
    "argv_fn, message",
    [
        (lambda c, t: _args(t / "nothing*.txt", t / "v.txt"), "matches no file"),
        (lambda c, t: _args(c, t / "missing" / "v.txt"), "does not exist"),
        (lambda c, t: _args(c, t), "is a directory"),
        (lambda c, t: _args(c, t / "v.txt") + ["--runer=Dataflow"], "--runer"),
        (lambda c, t: _args(c, t / "v.txt") + ["--vocab=x"], "--vocab=x"),
        (lambda c, t: [f"--input={c}", f"--output={t}/v.txt"], "--vocab_size"),
        (lambda c, t: _args(c, t / "v.txt", 150, "--do_lower_case=maybe"), "maybe"),
        (
            lambda c, t: _args(c, t / "v.txt", 150, "--reserved_tokens=[PAD] [UNK]"),
            "lack [CLS], [SEP], [MASK]",
        ),
        (
            lambda c, t: _args(
                c, t / "v.txt", 150, "--reserved_tokens=[UNK],[PAD],[CLS],[SEP],[MASK]"
            ),
            "[PAD] must be the first",
        ),
        (lambda c, t: _args(c, t / "v.txt", 150, "--min_count=0"), "--min_count"),
    ],
)
def test_bad_arguments_stop_before_any_work(
    capsys, corpus_file, tmp_path, argv_fn, message
):
    _expect_error(capsys, argv_fn(corpus_file, tmp_path), message)
    assert not os.path.exists(tmp_path / "v.txt")


def test_held_out_half_of_the_shared_sample_has_under_one_percent_unk(tmp_path):
    sample = shared_data("corpus-small", "sample.txt")
    with open(sample, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Cut at a document break (blank line) near the middle.
    cut = lines.index("", len(lines) // 2)
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    output = tmp_path / "vocab.txt"
    vocab.run(_args(train, output, 2000))
    tokens = features.read_vocab(str(output))
    assert len(tokens) == 2000
    held_out = [line for line in lines[cut:] if line.strip()]
    assert _unk_rate(tokens, held_out) < 0.01


def test_learned_vocab_drives_pretraining_data(learned, tmp_path):
    if importlib.util.find_spec("pipelines.pretraining_data") is None:
        pytest.skip("pipelines.pretraining_data (issue 2) is not there yet")
    from pipelines import pretraining_data

    corpus, output, _ = learned
    out_dir = tmp_path / "records"
    pretraining_data.run(
        [f"--input={corpus}", f"--vocab={output}", f"--output_dir={out_dir}"]
    )
    with open(out_dir / features.METADATA_FILE, encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["vocab_sha256"] == features.vocab_sha256(output)
    assert meta["vocab_size"] == 110
    assert meta["num_examples"] > 0


def test_rerun_clears_temporary_files_of_a_killed_run(corpus_file, tmp_path):
    out = tmp_path / "out" / "v.txt"
    out.parent.mkdir()
    tmp_path = out.parent
    (tmp_path / "v.txt.tmp-0123abcd").write_text("[PAD]\n[UN")  # cut short
    (tmp_path / "v.txt.json.tmp-0123abcd").write_text("{")
    vocab.run(_args(corpus_file, out, 100))
    assert sorted(os.listdir(tmp_path)) == ["v.txt", "v.txt.json"]
