"""pipelines.inspect: decoded instances, stats, PNG histogram."""

import os

import pytest
import tensorflow as tf

from configs import features, metadata
from pipelines import inspect, tfrecords


def test_inspect_prints_instances_and_writes_histogram(
    tmp_path, capsys, vocab_file, vocab_tokens
):
    ids = features.special_token_ids(vocab_tokens)
    word = {t: i for i, t in enumerate(vocab_tokens)}
    encoder = tfrecords.ExampleEncoder(16, 3, len(vocab_tokens))
    tokens = [ids["[CLS]"], word["the"], ids["[MASK]"], ids["[SEP]"], word["sea"]]
    tokens.append(ids["[SEP]"])
    with tf.io.TFRecordWriter(
        str(tmp_path / "pretraining-00000-of-00001.tfrecord")
    ) as w:
        for label in (0, 1, 1):
            w.write(encoder.encode(tokens, 4, label, [2], [word["dog"]]))
    metadata.write_metadata(
        str(tmp_path),
        {
            "format_version": features.METADATA_FORMAT_VERSION,
            "kind": "pretraining",
            "max_seq_length": 16,
            "vocab_file": vocab_file,
            "num_examples": 3,
        },
    )
    stats = inspect.run([str(tmp_path), "--num_instances=1"])
    out = capsys.readouterr().out
    assert "[CLS] the {[MASK]=>dog} [SEP] sea [SEP]" in out
    assert "num_examples=3" in out
    assert stats["records_read"] == 3 and stats["mean_length"] == 6
    assert abs(stats["label_fraction_1"] - 2 / 3) < 1e-9
    assert os.path.getsize(stats["histogram"]) > 1000
    assert open(stats["histogram"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cut_shard_is_one_line_naming_it(tmp_path, capsys, vocab_file, vocab_tokens):
    encoder = tfrecords.ExampleEncoder(16, 3, len(vocab_tokens))
    path = tmp_path / "pretraining-00000-of-00001.tfrecord"
    frames = b"".join(
        tfrecords.tfrecord_frame(encoder.encode([2, 5, 3, 6, 3], 3, 0, [1], [7]))
        for _ in range(4)
    )
    path.write_bytes(frames[:-10])  # a writer killed inside the last record
    try:
        inspect.main([str(tmp_path), f"--vocab={vocab_file}"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: ") and str(path) in err[0]


def _one_shard(directory, vocab_tokens):
    encoder = tfrecords.ExampleEncoder(16, 3, len(vocab_tokens))
    with tf.io.TFRecordWriter(
        str(directory / "pretraining-00000-of-00001.tfrecord")
    ) as w:
        w.write(encoder.encode([2, 5, 3, 6, 3], 3, 0, [1], [7]))


def _read_only_dir():
    """/proc/sys: a read-only mount even for root (chmod does not stop root)."""
    if os.access("/proc/sys", os.W_OK):
        pytest.skip("/proc/sys is writable here")
    return "/proc/sys"


@pytest.mark.parametrize(
    "where, reason",
    [
        ("read-only", "directory /proc/sys is not writable"),
        ("proc", "cannot write in /proc"),
        ("under-a-file", "is a file, not a directory"),
        ("a-directory", "is a directory; give a file path"),
        ("missing-parent", "does not exist"),
    ],
)
def test_unwritable_histogram_is_one_line_before_any_work(
    tmp_path, capsys, vocab_file, vocab_tokens, where, reason
):
    data = tmp_path / "data"
    data.mkdir()
    _one_shard(data, vocab_tokens)
    (tmp_path / "file").write_text("x")
    histogram = {
        "read-only": lambda: f"{_read_only_dir()}/lengths.png",
        "proc": lambda: "/proc/lengths.png",  # root may, procfs creates nothing
        "under-a-file": lambda: f"{tmp_path}/file/lengths.png",
        "a-directory": lambda: str(tmp_path),
        "missing-parent": lambda: f"{tmp_path}/no/such/lengths.png",
    }[where]()
    with pytest.raises(SystemExit) as e:
        inspect.main([str(data), f"--vocab={vocab_file}", f"--histogram={histogram}"])
    captured = capsys.readouterr()
    assert e.value.code == 2
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: --histogram {histogram}: ") and reason in line
    assert "instance" not in captured.out  # nothing was read
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".write-check")]
