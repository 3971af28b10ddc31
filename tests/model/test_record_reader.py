"""The pretraining record readers: tf.data, and numpy without TensorFlow."""

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import crc32c, example_batches, features, records
from model import data, pretrain
from pretraining_records import (
    TINY_PRED,
    TINY_SEQ,
    make_examples,
    tiny_flags,
    write_records,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def numpy_batches(files, **kwargs):
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("seed", 0)
    return data.numpy_pretraining_batches(
        files, max_seq_length=TINY_SEQ, max_predictions_per_seq=TINY_PRED, **kwargs
    )


def tf_batches(files, batch_size=4, input_context=None):
    ds = data.pretraining_dataset(
        files,
        batch_size=batch_size,
        max_seq_length=TINY_SEQ,
        max_predictions_per_seq=TINY_PRED,
        input_context=input_context,
        is_training=False,
    )
    return list(ds.as_numpy_iterator())


def assert_same_batches(expected, got):
    assert len(expected) == len(got) > 0
    for a, b in zip(expected, got):
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            assert a[key].shape == b[key].shape, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def frame_offsets(path):
    """Byte offset of each TFRecord frame of an uncompressed file."""
    blob = open(path, "rb").read()
    offsets, pos = [], 0
    while pos < len(blob):
        offsets.append(pos)
        pos += 12 + struct.unpack_from("<Q", blob, pos)[0] + 4
    return offsets


def flip_byte(path, offset):
    blob = bytearray(open(path, "rb").read())
    blob[offset] ^= 0x01
    open(path, "wb").write(bytes(blob))


# === tf.data ===
def test_batches_have_static_int32_shapes(records_dir):
    files = data.list_record_files(records_dir)
    assert len(files) == 2 and all(".tfrecord" in f for f in files)
    assert data.read_record_lengths(files[0]) == (TINY_SEQ, TINY_PRED)
    ds = data.pretraining_dataset(
        files, batch_size=4, max_seq_length=TINY_SEQ, max_predictions_per_seq=TINY_PRED
    )
    batch = next(iter(ds))
    assert batch["input_ids"].shape == (4, TINY_SEQ)
    assert batch["input_ids"].dtype == tf.int32
    assert batch["masked_lm_positions"].shape == (4, TINY_PRED)
    assert batch["masked_lm_weights"].dtype == tf.float32
    assert batch["next_sentence_labels"].shape == (4, 1)


def test_input_pipelines_read_disjoint_files(tmp_path):
    directory = write_records(tmp_path / "r", num=16, num_shards=4)
    files = data.list_record_files(directory)
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(2, pipeline, 1)
        ds = data.pretraining_dataset(
            files,
            batch_size=1,
            max_seq_length=TINY_SEQ,
            max_predictions_per_seq=TINY_PRED,
            input_context=context,
            is_training=False,
        )
        seen.append({tuple(b["input_ids"].numpy()[0]) for b in ds})
    assert len(seen[0]) == len(seen[1]) == 8
    assert not seen[0] & seen[1]


# === numpy reader == tf.data ===
@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_numpy_batches_equal_tf_data(tmp_path, compression):
    # 10 files of 20 or 21 records: more files than the interleave's 8
    # slots, so slots are refilled as files end (tf.data's order).
    directory = write_records(
        tmp_path / "r", num=203, num_shards=10, compression=compression
    )
    files = data.list_record_files(directory)
    assert len(files) == 10
    for batch_size in (1, 7):
        expected = tf_batches(files, batch_size)
        got = list(
            numpy_batches(files, batch_size=batch_size, shuffle_buffer=0, repeat=False)
        )
        assert_same_batches(expected, got)


def test_numpy_batches_equal_the_written_values(tmp_path):
    directory = write_records(tmp_path / "r", num=12, num_shards=1)
    files = data.list_record_files(directory)
    (batch,) = numpy_batches(files, batch_size=12, shuffle_buffer=0, repeat=False)
    for i, example in enumerate(make_examples(12)):
        for name, value in example.items():
            np.testing.assert_array_equal(batch[name][i], value, err_msg=name)


@pytest.mark.parametrize("process_count,num_files", [(2, 4), (3, 2), (4, 5)])
def test_processes_read_disjoint_complete_shares(tmp_path, process_count, num_files):
    directory = write_records(tmp_path / "r", num=60, num_shards=num_files)
    files = data.list_record_files(directory)
    everything = {tuple(e[features.INPUT_IDS]) for e in make_examples(60)}
    shares = []
    for index in range(process_count):
        got = list(
            numpy_batches(
                files,
                batch_size=1,
                shuffle_buffer=0,
                repeat=False,
                process_index=index,
                process_count=process_count,
            )
        )
        # The same records as the tf.data pipeline of that index.
        context = tf.distribute.InputContext(process_count, index, 1)
        assert_same_batches(tf_batches(files, 1, context), got)
        shares.append([tuple(b[features.INPUT_IDS][0]) for b in got])
    seen = [r for share in shares for r in share]
    assert len(seen) == len(set(seen)) == 60  # disjoint
    assert set(seen) == everything  # complete


def test_remote_paths_read_through_tf_gfile(tmp_path):
    # TensorFlow's in-memory filesystem stands in for gs://.
    local = write_records(tmp_path / "r", num=24, num_shards=3)
    remote = f"ram://{tmp_path.name}/records"
    tf.io.gfile.makedirs(remote)
    for name in os.listdir(local):
        tf.io.gfile.copy(os.path.join(local, name), f"{remote}/{name}")
    files = data.list_record_files(remote)
    assert [os.path.basename(f) for f in files] == sorted(
        n for n in os.listdir(local) if ".tfrecord" in n
    )
    assert data.check_records(files, TINY_SEQ, TINY_PRED) == 3
    got = list(numpy_batches(files, batch_size=3, shuffle_buffer=0, repeat=False))
    assert_same_batches(tf_batches(data.list_record_files(local), 3), got)


def test_shuffle_is_seeded_and_repeats(records_dir):
    files = data.list_record_files(records_dir)  # 64 records

    def first(seed, n=40):
        with numpy_batches(files, batch_size=4, seed=seed, shuffle_buffer=16) as it:
            return [next(it)[features.INPUT_IDS] for _ in range(n)]  # 2.5 epochs

    a, b, c = first(1), first(1), first(2)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(np.stack(a), np.stack(c))
    ordered = [
        b[features.INPUT_IDS]
        for b in numpy_batches(files, batch_size=4, shuffle_buffer=0, repeat=False)
    ]
    assert not np.array_equal(np.stack(a[:16]), np.stack(ordered))
    epoch = {tuple(r) for batch in a[:16] for r in batch}
    assert len(epoch) > 48  # a shuffle buffer of 16 mixes epochs only a little


def test_numpy_decoder_reads_unpacked_lists_in_any_order():
    # Legal Example encodings other writers produce: unpacked repeated
    # values, map entries in any order, features we do not read.
    examples = make_examples(6, seed=3)
    rng = np.random.RandomState(0)
    serialized = [
        encode_example(ex, packed=bool(i % 2), rng=rng) for i, ex in enumerate(examples)
    ]
    batch = example_batches.decode_pretraining_batch(serialized, TINY_SEQ, TINY_PRED)
    reference = example_batches.decode_pretraining_batch_protobuf(
        serialized, TINY_SEQ, TINY_PRED
    )
    for name in features.PRETRAINING_FEATURES:
        want = np.stack([ex[name] for ex in examples])
        np.testing.assert_array_equal(batch[name], want, err_msg=name)
        np.testing.assert_array_equal(reference[name], want, err_msg=name)
    # And one by one, through TensorFlow's own parser.
    spec = data.pretraining_feature_spec(TINY_SEQ, TINY_PRED)
    parsed = tf.io.parse_example(tf.constant(serialized), spec)
    for name in features.PRETRAINING_FEATURES:
        np.testing.assert_array_equal(batch[name], parsed[name].numpy(), err_msg=name)


def test_decoder_handles_large_and_negative_ids():
    example = make_examples(1)[0]
    example[features.INPUT_IDS][:4] = [127, 128, 16384, 2**31 - 1]
    example[features.MASKED_LM_IDS][:2] = [-1, 2**21]
    batch = example_batches.decode_pretraining_batch(
        [encode_example(example, packed=True)], TINY_SEQ, TINY_PRED
    )
    np.testing.assert_array_equal(
        batch[features.INPUT_IDS][0], example[features.INPUT_IDS]
    )
    np.testing.assert_array_equal(
        batch[features.MASKED_LM_IDS][0], example[features.MASKED_LM_IDS]
    )


def test_numpy_crc32c_matches_google_crc32c():
    google_crc32c = pytest.importorskip("google_crc32c")
    rng = np.random.RandomState(0)
    blobs = [b"", b"a", b"abc", b"123456789"] + [
        rng.bytes(int(n)) for n in rng.randint(0, 900, 50)
    ]
    want = [google_crc32c.value(b) for b in blobs]
    assert crc32c.crc32c_many(blobs).tolist() == want
    assert want[3] == 0xE3069283  # the CRC-32C check value


# === bad records: one line naming the file ===
def test_crc_mismatch_names_the_file(tmp_path):
    directory = write_records(tmp_path / "r", num=40, num_shards=2)
    files = data.list_record_files(directory)
    bad = files[1]
    flip_byte(bad, frame_offsets(bad)[7] + 30)  # inside record 7's data
    with pytest.raises(records.RecordError, match="record 7: data CRC") as e:
        list(numpy_batches(files, shuffle_buffer=0, repeat=False))
    assert str(e.value).startswith(bad) and e.value.path == bad
    with pytest.raises(records.RecordError, match="record 7: data CRC"):
        list(records.iter_record_blocks(bad, check_crc="numpy"))
    list(records.iter_record_blocks(files[0], check_crc="numpy"))
    flip_byte(files[0], 3)  # the first frame's length
    with pytest.raises(records.RecordError, match="CRC of the length") as e:
        data.check_records(files, TINY_SEQ, TINY_PRED)
    assert str(e.value).startswith(files[0])


def test_truncated_file_names_the_file(tmp_path):
    directory = write_records(tmp_path / "r", num=40, num_shards=2)
    files = data.list_record_files(directory)
    cut = files[0]
    assert [records.count_records(f) for f in files] == [20, 20]
    os.truncate(cut, os.path.getsize(cut) - 30)
    # Before training: local files are walked frame by frame.
    with pytest.raises(records.RecordError, match="truncated") as e:
        data.check_records(files, TINY_SEQ, TINY_PRED)
    assert str(e.value).startswith(cut) and "after 19 whole" in str(e.value)
    # Not walked (too big, remote or gzip): the reader names it when met.
    data.check_records(files, TINY_SEQ, TINY_PRED, walk_limit_bytes=0)
    with pytest.raises(records.RecordError, match="truncated") as e:
        list(numpy_batches(files, shuffle_buffer=0, repeat=False))
    assert str(e.value).startswith(cut)
    assert "\n" not in str(e.value)


def test_gzip_records_must_be_named_gz(tmp_path):
    directory = write_records(tmp_path / "r", num=16, num_shards=1, compression="GZIP")
    (gz,) = data.list_record_files(directory)
    plain_name = gz[: -len(".gz")]
    os.rename(gz, plain_name)
    with pytest.raises(records.RecordError, match="gzip-compressed but not") as e:
        data.check_records([plain_name], TINY_SEQ, TINY_PRED)
    assert str(e.value).startswith(plain_name)
    with pytest.raises(records.RecordError, match="gzip-compressed but not"):
        list(numpy_batches([plain_name], repeat=False))


def test_cut_gzip_file_names_the_file(tmp_path):
    directory = write_records(tmp_path / "r", num=64, num_shards=1, compression="GZIP")
    (gz,) = data.list_record_files(directory)
    blob = open(gz, "rb").read()
    open(gz, "wb").write(blob[: len(blob) * 2 // 3])
    with pytest.raises(records.RecordError, match="gzip data ends early") as e:
        data.check_records([gz], TINY_SEQ, TINY_PRED)  # inflated to its end
    assert str(e.value).startswith(gz)
    data.check_records([gz], TINY_SEQ, TINY_PRED, walk_limit_bytes=0)
    with pytest.raises(records.RecordError) as e:
        list(numpy_batches([gz], shuffle_buffer=0, repeat=False))
    assert str(e.value).startswith(gz)
    # A .gz name on an uncompressed file.
    plain = str(tmp_path / "plain.tfrecord.gz")
    open(plain, "wb").write(records.tfrecord_frame(b"x"))
    with pytest.raises(records.RecordError, match="not gzip-compressed"):
        data.check_records([plain], TINY_SEQ, TINY_PRED)


def test_other_lengths_name_the_file(tmp_path):
    directory = write_records(tmp_path / "r", num=8, seq=24, pred=4, metadata=False)
    files = data.list_record_files(directory)
    with pytest.raises(records.RecordError, match="max_seq_length=24") as e:
        data.check_records(files, TINY_SEQ, TINY_PRED)
    assert str(e.value).startswith(files[0])
    with pytest.raises(records.RecordError, match="max_seq_length=24") as e:
        next(numpy_batches(files))
    assert str(e.value).startswith(files[0])


def test_decoder_names_the_length_that_differs():
    serialized = [encode_example(ex) for ex in make_examples(3, seq=24)]
    with pytest.raises(records.RecordError) as e:
        example_batches.decode_pretraining_batch(
            serialized, TINY_SEQ, TINY_PRED, path="f"
        )
    assert str(e.value) == (
        "f: not a pretraining record of this schema: record 0 of the batch: "
        "input_ids has 24 values, expected 32 (max_seq_length=32)"
    )


def test_mixed_compression_and_empty_files(tmp_path):
    plain = write_records(tmp_path / "p", num=8, num_shards=2, metadata=False)
    gz = write_records(
        tmp_path / "g", num=8, num_shards=1, metadata=False, compression="GZIP"
    )
    files = data.list_record_files(plain) + data.list_record_files(gz)
    with pytest.raises(records.RecordError, match="mixed") as e:
        data.check_records(files, TINY_SEQ, TINY_PRED)
    assert str(e.value).startswith(files[-1])
    # An empty file first: lengths come from the first file with a record.
    empty = os.path.join(plain, "reference-0000.tfrecord")
    open(empty, "wb").close()
    files = data.list_record_files(plain)
    assert files[0] == empty
    assert data.first_record_lengths(files) == (TINY_SEQ, TINY_PRED)
    assert data.check_records(files, TINY_SEQ, TINY_PRED) == 2
    with pytest.raises(ValueError, match="holds no records"):
        data.read_record_lengths(empty)


def test_damaged_bytes_give_a_record_error_or_the_right_values():
    # Without the CRC check: any byte changed gives RecordError, or (where
    # the change keeps a valid Example) what TensorFlow's parser reads.
    examples = make_examples(4, seed=5)
    serialized = [encode_example(ex) for ex in examples]
    spec = data.pretraining_feature_spec(TINY_SEQ, TINY_PRED)
    rng = np.random.RandomState(0)
    outcomes = set()
    for _ in range(150):
        batch = list(serialized)
        i = rng.randint(len(batch))
        damaged = bytearray(batch[i])
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randint(len(damaged))] = rng.randint(256)
        batch[i] = bytes(damaged)
        try:
            got = example_batches.decode_pretraining_batch(batch, TINY_SEQ, TINY_PRED)
        except records.RecordError:
            outcomes.add("error")
            continue
        want = tf.io.parse_example(tf.constant(batch), spec)
        for name in features.PRETRAINING_FEATURES:
            np.testing.assert_array_equal(
                got[name], tf.cast(want[name], got[name].dtype).numpy()
            )
        outcomes.add("decoded")
    assert outcomes == {"error", "decoded"}


def test_not_an_example_is_an_error(tmp_path):
    path = str(tmp_path / "junk.tfrecord")
    with open(path, "wb") as f:
        f.write(records.tfrecord_frame(b"\x0a\x05hello"))
    with pytest.raises(records.RecordError) as e:
        data.check_records([path], TINY_SEQ, TINY_PRED)
    assert str(e.value).startswith(path)
    with pytest.raises(records.RecordError, match="not a pretraining record"):
        example_batches.decode_pretraining_batch(
            [b"\x0a\x05hello"], TINY_SEQ, TINY_PRED
        )


# === model.pretrain refuses before building anything ===
def run_pretrain_error(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        pretrain.run(tiny_flags(data_dir, model_dir))
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message
    assert not os.path.exists(model_dir)
    return message


def test_pretrain_on_empty_records_stops_with_one_line(tmp_path):
    directory = write_records(tmp_path / "r", num=0, num_shards=2)
    assert "no records" in run_pretrain_error(directory, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no record files" in run_pretrain_error(str(empty), tmp_path)


def test_pretrain_refuses_our_shards_without_metadata(tmp_path):
    directory = write_records(tmp_path / "r", num=16)
    os.remove(os.path.join(directory, features.METADATA_FILE))
    message = run_pretrain_error(directory, tmp_path)
    assert "no metadata.json" in message and "did not finish" in message


def test_pretrain_names_a_damaged_file(tmp_path):
    directory = write_records(tmp_path / "r", num=16, num_shards=2)
    bad = data.list_record_files(directory)[1]
    flip_byte(bad, 20)
    message = run_pretrain_error(directory, tmp_path)
    assert bad in message and "CRC" in message


def test_pretrain_names_a_cut_file(tmp_path):
    directory = write_records(tmp_path / "r", num=16, num_shards=2)
    cut = data.list_record_files(directory)[1]
    os.truncate(cut, os.path.getsize(cut) - 5)
    message = run_pretrain_error(directory, tmp_path)
    assert cut in message and "truncated" in message


def test_pretrain_names_records_of_other_lengths(tmp_path):
    directory = write_records(tmp_path / "r", num=16, metadata=False)
    other = write_records(tmp_path / "o", num=4, num_shards=1, seq=24, metadata=False)
    odd = os.path.join(directory, "reference-00009.tfrecord")
    os.rename(data.list_record_files(other)[0], odd)
    message = run_pretrain_error(directory, tmp_path)
    assert odd in message and "max_seq_length=24" in message


# === no TensorFlow ===
BLOCK_TF = """
import sys
for name in ("tensorflow", "tensorflow_text"):
    sys.modules[name] = None  # any import of TensorFlow fails
"""


def run_without_tensorflow(code):
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_TF + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": ROOT},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_reader_imports_and_runs_without_tensorflow(records_dir):
    code = f"""
from configs import records
from model import data
files = data.list_record_files({records_dir!r})
assert data.check_records(files, {TINY_SEQ}, {TINY_PRED}) == 2
with data.numpy_pretraining_batches(files, batch_size=8, max_seq_length={TINY_SEQ},
        max_predictions_per_seq={TINY_PRED}, seed=0) as it:
    batch = next(it)
assert batch["input_ids"].shape == (8, {TINY_SEQ})
print(sorted(m for m in sys.modules if m.startswith("tensorflow")))
"""
    assert run_without_tensorflow(code) == "['tensorflow', 'tensorflow_text']"


@pytest.mark.slow  # imports Keras and JAX (~10 s)
def test_check_data_runs_without_tensorflow(records_dir):
    code = f"""
from model import pretrain
args = pretrain.parse_args({tiny_flags(records_dir, "unused")!r})
cfg, files, meta, vocab = pretrain.check_data(pretrain.resolve_config(args), args.data)
assert meta["num_examples"] == 64 and len(files) == 2
print(sorted(m for m in sys.modules if m.startswith("tensorflow")))
"""
    assert run_without_tensorflow(code) == "['tensorflow', 'tensorflow_text']"


# === an Example encoder for the odd encodings above ===
def _varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _field(tag, payload):
    return bytes([tag]) + _varint(len(payload)) + payload


def encode_example(example, packed=True, rng=None):
    """A serialized Example; unpacked lists and shuffled entries on request."""
    entries = []
    for name, value in example.items():
        if value.dtype == np.float32:
            if packed:
                body = _field(0x0A, value.astype("<f4").tobytes())
            else:
                body = b"".join(b"\x0d" + struct.pack("<f", v) for v in value)
            feature = _field(0x12, body)
        else:
            if packed:
                body = _field(0x0A, b"".join(_varint(int(v)) for v in value))
            else:
                body = b"".join(b"\x08" + _varint(int(v)) for v in value)
            feature = _field(0x1A, body)
        entries.append(
            _field(0x0A, _field(0x0A, name.encode()) + _field(0x12, feature))
        )
    if rng is not None:
        entries.append(  # a feature the reader does not know
            _field(0x0A, _field(0x0A, b"extra") + _field(0x12, _field(0x0A, b"")))
        )
        rng.shuffle(entries)
    return _field(0x0A, b"".join(entries))
