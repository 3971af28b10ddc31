"""tf.data readers of the pretraining records (google-research/bert schema).

Feature names and lengths come from `configs.features`, the same table the
Beam writer uses. Pipelines are built per input pipeline from a
`tf.distribute.InputContext` (`strategy.distribute_datasets_from_function`):
files are sharded across pipelines, interleaved, shuffled, repeated, batched
with the PER-REPLICA batch size and `drop_remainder=True` (static shapes for
TPU and XLA), parsed in batches, cast to int32 and prefetched.
"""

import os

import tensorflow as tf

from configs import features

_SKIP_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".md", ".jsonl")


def list_record_files(data):
    """Record files of a directory (`*.tfrecord*`, else every data-looking
    file) or of a comma-separated list of globs; sorted.

    Raises:
        ValueError: nothing matched.
    """
    if tf.io.gfile.isdir(data):
        files = tf.io.gfile.glob(os.path.join(data, "*.tfrecord*"))
        if not files:
            files = [
                os.path.join(data, name)
                for name in tf.io.gfile.listdir(data)
                if not name.endswith(_SKIP_SUFFIXES)
                and not name.startswith(".")
                and not tf.io.gfile.isdir(os.path.join(data, name))
            ]
    else:
        files = [f for pattern in data.split(",") for f in tf.io.gfile.glob(pattern)]
    if not files:
        raise ValueError(f"no record files found in {data}")
    return sorted(files)


def _compression(path):
    return "GZIP" if path.endswith(".gz") else ""


def read_record_lengths(path):
    """(max_seq_length, max_predictions_per_seq) of the first record in `path`.

    For records without `metadata.json` (google-research/bert's scripts).
    """
    dataset = tf.data.TFRecordDataset(path, compression_type=_compression(path))
    for raw in dataset.take(1):
        example = tf.train.Example.FromString(raw.numpy())
        feats = example.features.feature
        missing = [n for n in features.PRETRAINING_FEATURES if n not in feats]
        if missing:
            raise ValueError(
                f"{path}: records lack pretraining feature(s) {', '.join(missing)}"
            )
        return (
            len(feats[features.INPUT_IDS].int64_list.value),
            len(feats[features.MASKED_LM_IDS].int64_list.value),
        )
    raise ValueError(f"{path} holds no records")


def pretraining_feature_spec(max_seq_length, max_predictions_per_seq):
    """`tf.io.parse_example` spec for pretraining records."""
    dtypes = {"int64": tf.int64, "float32": tf.float32}
    return {
        name: tf.io.FixedLenFeature([length], dtypes[dtype])
        for name, (dtype, length) in features.feature_lengths(
            "pretraining", max_seq_length, max_predictions_per_seq
        ).items()
    }


def pretraining_dataset(
    files,
    *,
    batch_size,
    max_seq_length,
    max_predictions_per_seq,
    input_context=None,
    shuffle_buffer=10000,
    seed=0,
    masker=None,
    is_training=True,
):
    """Batches of pretraining features for one input pipeline.

    Args:
        files: record file paths (all pipelines get the same list).
        batch_size: PER-REPLICA batch size (`input_context.
            get_per_replica_batch_size(global)`).
        max_seq_length, max_predictions_per_seq: record lengths.
        input_context: `tf.distribute.InputContext` or None.
        shuffle_buffer: records in the shuffle buffer (0 = no shuffle).
        seed: shuffle seed (the loop passes seed + first step, so a resumed
            run does not replay the same order).
        masker: optional batched map function (`DynamicMasker`).
        is_training: shuffle and repeat forever.

    Returns a dataset of dicts: int32 `[batch_size, max_seq_length]`
    `input_ids`/`input_mask`/`segment_ids`; int32 `[batch_size, p]`
    `masked_lm_positions`/`masked_lm_ids`; float32 `[batch_size, p]`
    `masked_lm_weights`; int32 `[batch_size, 1]` `next_sentence_labels`.
    """
    dataset = tf.data.Dataset.from_tensor_slices(list(files))
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    shard_records = num_pipelines > 1 and len(files) < num_pipelines
    if num_pipelines > 1 and not shard_records:
        # Each pipeline reads its own files: no record is read twice.
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if is_training:
        dataset = dataset.shuffle(len(files), seed=seed).repeat()
    compression = _compression(files[0])
    dataset = dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(8, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shard_records:
        # Fewer files than pipelines: fall back to record-level sharding.
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if is_training and shuffle_buffer > 0:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    spec = pretraining_feature_spec(max_seq_length, max_predictions_per_seq)
    dataset = dataset.map(
        lambda raw: tf.io.parse_example(raw, spec),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if masker is not None:
        dataset = dataset.map(masker, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(_to_int32, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _to_int32(batch):
    # TPUs (and XLA) want int32 ids; TFRecords only store int64.
    return {
        k: tf.cast(v, tf.int32) if v.dtype == tf.int64 else v for k, v in batch.items()
    }
