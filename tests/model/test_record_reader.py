import tensorflow as tf

from model import data
from pretraining_records import TINY_PRED, TINY_SEQ, write_records


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
