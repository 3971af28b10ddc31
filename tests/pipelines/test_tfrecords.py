"""ExampleEncoder bytes == tf.train.Example bytes; WriteTfRecords shards
parse with google-research/bert's reader spec."""

import glob
import os
import random

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline

from configs import features
from pipelines import masking, tfrecords


def _instance(rng, seq, pred, vocab_size):
    n = rng.randint(5, seq)
    ids = [rng.randrange(vocab_size) for _ in range(n)]
    m = min(pred, rng.randint(0, pred), n)
    pos = sorted(rng.sample(range(n), m))
    return ids, rng.randint(2, n), rng.randint(0, 1), pos, [ids[p] for p in pos]


def _proto(values):
    feature = {}
    for name, v in values.items():
        if name == features.MASKED_LM_WEIGHTS:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=v))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=v))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def bert_reader_spec(seq, pred):
    """google-research/bert run_pretraining.py's name_to_features."""
    return {
        "input_ids": tf.io.FixedLenFeature([seq], tf.int64),
        "input_mask": tf.io.FixedLenFeature([seq], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([seq], tf.int64),
        "masked_lm_positions": tf.io.FixedLenFeature([pred], tf.int64),
        "masked_lm_ids": tf.io.FixedLenFeature([pred], tf.int64),
        "masked_lm_weights": tf.io.FixedLenFeature([pred], tf.float32),
        "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
    }


@pytest.mark.parametrize("seq,pred,vocab_size", [(128, 20, 30522), (8, 5, 300)])
def test_encoder_matches_protobuf_byte_for_byte(seq, pred, vocab_size):
    encoder = tfrecords.ExampleEncoder(seq, pred, vocab_size)
    rng = random.Random(seq)
    for _ in range(300):
        inst = _instance(rng, seq, pred, vocab_size)
        values = tfrecords.example_features(*inst, seq, pred)
        ours = encoder.encode(*inst)
        assert ours == _proto(values).SerializeToString(deterministic=True)
        assert tf.train.Example.FromString(ours) == _proto(values)


def _batch(instances, seq, pred):
    import numpy as np

    n = len(instances)
    b = masking.MaskedBatch(
        np.zeros((n, seq), np.int32),
        np.array([len(i[0]) for i in instances]),
        np.array([i[1] for i in instances]),
        np.array([i[2] for i in instances]),
        np.zeros((n, pred), np.int32),
        np.zeros((n, pred), np.int32),
        np.array([len(i[3]) for i in instances]),
    )
    for r, (ids, _, _, pos, orig) in enumerate(instances):
        b.input_ids[r, : len(ids)] = ids
        b.positions[r, : len(pos)] = pos
        b.original_ids[r, : len(orig)] = orig
    return b


@pytest.mark.parametrize("seq,pred,vocab_size", [(128, 20, 30522), (8, 5, 300)])
def test_batch_encoder_matches_single_encoder(seq, pred, vocab_size):
    encoder = tfrecords.ExampleEncoder(seq, pred, vocab_size)
    rng = random.Random(1)
    instances = [_instance(rng, seq, pred, vocab_size) for _ in range(200)]
    assert encoder.encode_batch(_batch(instances, seq, pred)) == [
        encoder.encode(*inst) for inst in instances
    ]


@pytest.mark.parametrize(
    "rows",
    [
        [[0, 1, 127, 128], [16383, 16384, 2**16 - 1, 5]],  # table path
        [[0, 1, 127, 128], [16383, 16384, 2**21 - 1, 2**21]],  # arithmetic path
    ],
)
def test_varint_rows_matches_protobuf_varints(rows):
    import numpy as np

    values = np.array(rows)
    packed, offsets = tfrecords.varint_rows(values)
    want = [b"".join(tfrecords.varint(int(v)) for v in row) for row in values]
    assert [packed[offsets[i] : offsets[i + 1]] for i in range(2)] == want


def test_encoder_refuses_overlong_instances():
    encoder = tfrecords.ExampleEncoder(8, 2, 100)
    with pytest.raises(ValueError):
        encoder.encode(list(range(9)), 2, 0, [1], [1])


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_write_tf_records_shards_parse_with_bert_spec(tmp_path, compression):
    seq, pred = 16, 3
    rng = random.Random(0)
    instances = [_instance(rng, seq, pred, 50) for _ in range(40)]
    masked = [_batch(instances[:25], seq, pred), _batch(instances[25:], seq, pred)]
    with TestPipeline() as p:
        _ = (
            p
            | beam.Create(masked)
            | tfrecords.WriteTfRecords(
                output_dir=str(tmp_path),
                max_seq_length=seq,
                max_predictions_per_seq=pred,
                vocab_size=50,
                num_shards=3,
                compression=compression,
            )
        )
    suffix = tfrecords.shard_suffix(compression)
    files = sorted(glob.glob(os.path.join(tmp_path, "*")))
    assert [os.path.basename(f) for f in files] == [
        f"pretraining-0000{i}-of-00003{suffix}" for i in range(3)
    ]
    ds = tf.data.TFRecordDataset(
        files, compression_type="GZIP" if compression == "gzip" else ""
    ).map(lambda r: tf.io.parse_single_example(r, bert_reader_spec(seq, pred)))
    got = sorted(
        (tuple(x["input_ids"].numpy()), tuple(x["masked_lm_ids"].numpy())) for x in ds
    )
    want = sorted(
        (
            tuple(ids + [0] * (seq - len(ids))),
            tuple(orig + [0] * (pred - len(orig))),
        )
        for ids, _, _, _, orig in instances
    )
    assert got == want


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_count_records_names_a_cut_shard(tmp_path, compression):
    import gzip

    frames = b"".join(tfrecords.tfrecord_frame(bytes([i]) * 50) for i in range(5))
    if compression == "gzip":
        whole = gzip.compress(frames)
        cut = gzip.compress(frames[:-10])
    else:
        whole, cut = frames, frames[:-10]
    path = tmp_path / "pretraining-00000-of-00001.tfrecord"
    path.write_bytes(whole)
    assert tfrecords.count_records(str(path), compression) == 5
    path.write_bytes(cut)
    with pytest.raises(tfrecords.CutRecordError, match=f"{path}: cut short inside"):
        tfrecords.count_records(str(path), compression)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_shard_pieces_go_once_the_shard_is_in_place(tmp_path, compression):
    """A shard's pieces are deleted right after its rename (the records sit
    on disk once); a retried or duplicate attempt that then finds them gone
    reports the finished shard instead of failing, and one that finds them
    gone without a finished shard fails."""
    temp = tmp_path / ".temp-pieces-x"
    temp.mkdir()
    frames = [tfrecords.tfrecord_frame(bytes([i]) * (i + 1)) for i in range(6)]
    pieces = []
    for i in range(3):
        path = temp / f"00000-{i}.piece"
        path.write_bytes(b"".join(frames[2 * i : 2 * i + 2]))
        pieces.append(str(path))
    fn = tfrecords._ConcatenateShardFn(
        str(tmp_path / "pretraining"), 1, compression, str(temp)
    )
    element = (0, [None, *reversed(pieces)])
    (final,) = fn.process(element)
    assert final.endswith(
        "pretraining-00000-of-00001" + tfrecords.shard_suffix(compression)
    )
    assert tfrecords.count_records(final, compression) == 6
    assert not any(os.path.exists(p) for p in pieces)
    before = open(final, "rb").read()
    assert list(fn.process(element)) == [final]  # the retry
    assert open(final, "rb").read() == before
    assert os.listdir(temp) == []  # no temporary shard left behind
    os.remove(final)
    with pytest.raises(Exception):
        list(fn.process(element))
