"""Tests for pipelines/classification_data.py: pure parsing, transforms, job."""

import json
import os

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from configs import features, metadata
from configs.schema import ConfigError
from pipelines import classification_data as cd
from pipelines import options

PARSE = dict(text_column="sentence", text_b_column="", label_column="label")


# === Pure functions ===
def test_parse_row_tsv_keeps_unbalanced_quotes():
    status, row = cd.parse_row(
        b'a "quoted start\t1', fmt="tsv", columns=["sentence", "label"], **PARSE
    )
    assert status == "ok"
    assert row == ('a "quoted start', None, "1")


def test_parse_row_csv_and_jsonl():
    assert cd.parse_row(
        b'"a, b",0', fmt="csv", columns=["sentence", "label"], **PARSE
    ) == ("ok", ("a, b", None, "0"))
    assert cd.parse_row(
        b'{"sentence": "fine", "label": 1}', fmt="jsonl", columns=[], **PARSE
    ) == ("ok", ("fine", None, "1"))


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"\xff\xfe\t1", cd.BAD_UNDECODABLE),
        (b"no tab here", cd.BAD_COLUMNS),
        (b"a\tb\tc", cd.BAD_COLUMNS),
        (b"  \t1", cd.BAD_MISSING_TEXT),
        (b"text\t", cd.BAD_MISSING_LABEL),
    ],
)
def test_parse_row_bad_tsv(line, reason):
    assert cd.parse_row(line, fmt="tsv", columns=["sentence", "label"], **PARSE) == (
        "bad",
        reason,
    )


def test_parse_row_bad_jsonl_and_blank():
    assert cd.parse_row(b"{not json", fmt="jsonl", columns=[], **PARSE) == (
        "bad",
        cd.BAD_JSON,
    )
    assert cd.parse_row(b"[1, 2]", fmt="jsonl", columns=[], **PARSE)[0] == "bad"
    assert cd.parse_row(b"   ", fmt="tsv", columns=["sentence", "label"], **PARSE)[
        0
    ] == ("blank")


def test_parse_row_pair():
    status, row = cd.parse_row(
        b"q\ta\tyes",
        fmt="tsv",
        columns=["q", "a", "label"],
        text_column="q",
        text_b_column="a",
        label_column="label",
    )
    assert (status, row) == ("ok", ("q", "a", "yes"))


def test_sort_labels_numeric_then_text():
    assert cd.sort_labels(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert cd.sort_labels(["pos", "neg"]) == ["neg", "pos"]


def test_detect_format():
    assert cd.detect_format("x/train.TSV") == "tsv"
    assert cd.detect_format("a.csv") == "csv"
    assert cd.detect_format("a.jsonl.gz") == "jsonl"
    with pytest.raises(ConfigError):
        cd.detect_format("a.txt")


# === Transforms ===
def test_parse_labelled_rows_learns_labels_and_counts_bad():
    lines = [b"good film\tpos", b"bad film\tneg", b"\xff\tpos", b"   "]
    p = TestPipeline()
    out = (
        p
        | beam.Create(lines)
        | cd.ParseLabelledRows(fmt="tsv", columns=["sentence", "label"], **PARSE)
    )
    assert_that(
        out["rows"],
        equal_to([("good film", None, 1), ("bad film", None, 0)]),
        label="Rows",
    )
    assert_that(out["labels"], equal_to([["neg", "pos"]]), label="Labels")
    assert_that(
        out["bad"] | beam.Map(lambda d: d["reason"]),
        equal_to([cd.BAD_UNDECODABLE]),
        label="Bad",
    )
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(
            MetricsFilter().with_namespace(cd.PARSE_NAMESPACE)
        )["counters"]
    }
    assert counters[cd.ROWS_READ] == 4
    assert counters[cd.ROWS_BLANK] == 1
    assert counters[cd.BAD_UNDECODABLE] == 1


def test_tokenize_labelled_rows_packs_like_bert(vocab_file, vocab_tokens):
    ids = {t: i for i, t in enumerate(vocab_tokens)}
    rows = [("the dog", None, 1), ("the fox jumps over the lazy dog", None, 0)]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create(rows)
            | cd.TokenizeLabelledRows(vocab_path=vocab_file, max_seq_length=8)
        )
        short = [ids["[CLS]"], ids["the"], ids["dog"], ids["[SEP]"]]
        # Truncated to 8: [CLS] + 6 wordpieces + [SEP].
        long = (
            [ids["[CLS]"]]
            + [ids[w] for w in "the fox jumps over the lazy".split()]
            + [ids["[SEP]"]]
        )
        assert_that(
            out,
            equal_to(
                [
                    {
                        "input_ids": short + [0] * 4,
                        "input_mask": [1] * 4 + [0] * 4,
                        "segment_ids": [0] * 8,
                        "label_ids": [1],
                    },
                    {
                        "input_ids": long,
                        "input_mask": [1] * 8,
                        "segment_ids": [0] * 8,
                        "label_ids": [0],
                    },
                ]
            ),
        )


# === The job ===
def _read_records(out_dir, max_seq_length):
    specs = features.feature_lengths("classification", max_seq_length)
    spec = {k: tf.io.FixedLenFeature([n], tf.int64) for k, (_, n) in specs.items()}
    files = tf.io.gfile.glob(os.path.join(out_dir, "classification-*"))
    ds = tf.data.TFRecordDataset(files).map(
        lambda r: tf.io.parse_single_example(r, spec)
    )
    return [{k: v.numpy().tolist() for k, v in ex.items()} for ex in ds]


def test_run_end_to_end_with_bad_rows(tmp_path, vocab_file, vocab_tokens):
    data = tmp_path / "train.tsv"
    data.write_bytes(
        b"sentence\tlabel\n"
        b"the dog went back to sleep\t1\n"
        b'a "quoted fox\t0\n'
        b"the sea was calm\t1\n"
        b"\xff\xfe\t1\n"
        b"wrong\tcolumn\tcount\n"
        b"unknown label here\t7\n"
    )
    out = tmp_path / "out"
    meta = cd.run(
        [
            f"--input={data}",
            f"--vocab={vocab_file}",
            f"--output_dir={out}",
            "--labels=0,1",
            "--max_seq_length=16",
            "--num_shards=2",
            "--max_bad_fraction=0.5",  # 3 of 6 rows are bad on purpose
        ]
    )
    assert meta == metadata.read_metadata(str(out))
    for key in metadata.CLASSIFICATION_KEYS:
        assert key in meta, key
    assert meta["kind"] == "classification"
    assert meta["num_examples"] == 3 and meta["num_shards"] == 2
    assert meta["labels"] == ["0", "1"]
    assert meta["label_counts"] == {"0": 1, "1": 2}
    assert meta["bad_rows"] == {
        cd.BAD_UNDECODABLE: 1,
        cd.BAD_COLUMNS: 1,
        cd.BAD_UNKNOWN_LABEL: 1,
    }
    assert meta["vocab_size"] == len(vocab_tokens)
    dead = [
        json.loads(line)
        for line in (out / cd.DEAD_LETTER_FILE).read_text().splitlines()
    ]
    assert sorted(d["reason"] for d in dead) == sorted(meta["bad_rows"])
    records = _read_records(str(out), 16)
    assert len(records) == 3
    ids = {t: i for i, t in enumerate(vocab_tokens)}
    by_label = sorted(records, key=lambda r: (r["label_ids"], sum(r["input_mask"])))
    assert by_label[0]["input_ids"][:2] == [ids["[CLS]"], ids["a"]]
    for r in records:
        n = sum(r["input_mask"])
        assert (
            r["input_ids"][0] == ids["[CLS]"] and r["input_ids"][n - 1] == ids["[SEP]"]
        )
        assert r["input_ids"][n:] == [0] * (16 - n)


def test_run_no_usable_rows_is_an_error(tmp_path, vocab_file):
    data = tmp_path / "train.jsonl"
    data.write_text('{"sentence": "", "label": 1}\n{"oops"\n')
    with pytest.raises(options.JobFailed, match="no usable rows"):
        cd.run(
            [f"--input={data}", f"--vocab={vocab_file}", f"--output_dir={tmp_path}/o"]
        )
    assert not (tmp_path / "o" / "metadata.json").exists()


def test_too_many_bad_rows_fail_naming_the_flag(tmp_path, vocab_file, capsys):
    # A 3-class file against --labels=0,1: a third of the rows are bad.
    data = tmp_path / "train.tsv"
    rows = [f"the dog went back {i}\t{i % 3}" for i in range(30)]
    data.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    out = tmp_path / "o"
    argv = [f"--input={data}", f"--vocab={vocab_file}", f"--output_dir={out}"]
    with pytest.raises(SystemExit) as e:
        cd.main(argv + ["--labels=0,1"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "10 of 30 rows are bad" in err[0], err
    assert "--max_bad_fraction=0.1" in err[0] and "--labels=0,1" in err[0]
    assert not (out / "metadata.json").exists()
    # Raising the ceiling accepts the file; the bad rows are counted.
    meta = cd.run(argv + ["--labels=0,1", "--max_bad_fraction=0.5", "--overwrite"])
    assert meta["num_examples"] == 20 and meta["bad_rows"] == {"unknown-label": 10}


def test_truncated_gzip_input_is_an_error_naming_it(tmp_path, vocab_file, capsys):
    import gzip

    rows = "".join(f"the dog went back {i}\t{i % 2}\n" for i in range(2000))
    packed = gzip.compress(("sentence\tlabel\n" + rows).encode())
    data = tmp_path / "train.tsv.gz"
    data.write_bytes(packed[: len(packed) // 2])  # like `head -c`
    with pytest.raises(SystemExit) as e:
        cd.main(
            [f"--input={data}", f"--vocab={vocab_file}", f"--output_dir={tmp_path}/o"]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(data) in err[0] and "truncated" in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_seq_lenght=3"], "unrecognized arguments|unknown flag"),
        (["--do_lower_case=maybe"], "maybe"),
        (["--max_bad_fraction=2"], "max_bad_fraction"),
        (["--output_dir={tmp}/afile"], "is a file"),
        (["--output_dir={tmp}/afile/sub"], "is a file"),
    ],
)
def test_bad_flags_are_one_line_exit_2(tmp_path, vocab_file, capsys, extra, message):
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\nhello\t1\n")
    (tmp_path / "afile").write_text("x")
    argv = [f"--input={data}", f"--vocab={vocab_file}", f"--output_dir={tmp_path}/o"]
    with pytest.raises(SystemExit) as e:
        cd.main(argv + [x.format(tmp=tmp_path) for x in extra])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert __import__("re").search(message, err[0]), err[0]


def test_bad_flags_stop_before_work(tmp_path, vocab_file):
    data = tmp_path / "train.tsv"
    data.write_text("text\tlabel\nhello\t1\n")
    args = [f"--input={data}", f"--vocab={vocab_file}", f"--output_dir={tmp_path}/o"]
    with pytest.raises(ConfigError, match="column 'sentence' is not in the header"):
        cd.run(args)
    with pytest.raises(ConfigError, match="unknown flag.*--max_seq_lenght"):
        cd.run(args + ["--text_column=text", "--max_seq_lenght=3"])
    with pytest.raises(ConfigError, match="matches no file"):
        cd.run([f"--input={tmp_path}/missing.tsv"] + args[1:])
    bad_vocab = tmp_path / "v.txt"
    bad_vocab.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ConfigError, match=r"\[CLS\]"):
        cd.run(args[:1] + [f"--vocab={bad_vocab}"] + args[2:] + ["--text_column=text"])


def test_any_run_clears_beam_temp_files_of_a_killed_run(tmp_path, vocab_file):
    # What `kill -9` during the write leaves (names as Beam's file sinks make
    # them); a plain rerun, without --overwrite, clears it and runs.
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\nthe dog\t1\nthe fox\t0\n")
    out = tmp_path / "o"
    for name in cd.BEAM_TEMP_PREFIXES:
        (out / f"{name}6b8d7f6eec7f11f1").mkdir(parents=True)
    (out / "beam-temp-classification-6b8d7f6eec7f11f1" / "x.tfrecord").write_bytes(b"c")
    meta = cd.run([f"--input={data}", f"--vocab={vocab_file}", f"--output_dir={out}"])
    assert meta["num_examples"] == 2
    assert not [n for n in os.listdir(out) if n.startswith("beam-temp-")]
    assert os.path.exists(out / "metadata.json")
