"""pipelines.inspect: decoded instances, stats, PNG histogram."""

import os

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
