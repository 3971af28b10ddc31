"""Readers of the pretraining records (google-research/bert schema).

Feature names and lengths come from `configs.features`, the same table the
Beam writer uses. Two readers give the same batches:

- `numpy_pretraining_batches` (no TensorFlow; the JAX trainer): numpy
  dicts from `configs.records` (TFRecord framing with CRC checks, gzip)
  and `configs.example_batches` (a vectorized `tf.train.Example`
  decoder), read in a background thread.
- `pretraining_dataset` (tf.data; the TensorFlow trainer): pipelines built
  per input pipeline from a `tf.distribute.InputContext`
  (`strategy.distribute_datasets_from_function`).

Both shard files across processes/pipelines (records when there are fewer
files than them), interleave up to 8 files record by record, shuffle,
repeat and batch with `drop_remainder=True` (static shapes for TPU and
XLA), and cast ids to int32. Unshuffled, their batches are identical
(tested). The file helpers (`list_record_files`, `read_record_lengths`,
`check_records`) are TensorFlow-free for local paths; TensorFlow is
imported only inside the tf.data functions and for `scheme://` paths.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import threading

import numpy as np

from configs import example_batches, example_proto, features, fileio, records

_SKIP_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".md", ".jsonl")
# Interleave width (files read record by record at once), as tf.data's.
CYCLE_LENGTH = 8
# Names of the data job's shards (`pipelines.tfrecords.WriteTfRecords`):
# `pretraining-SSSSS-of-NNNNN.tfrecord[.gz]`.
SHARD_NAME = re.compile(
    rf"^{features.PRETRAINING_SHARD_PREFIX}-\d{{5}}-of-\d{{5}}\.tfrecord(\.gz)?$"
)


def list_record_files(data):
    """Record files of a directory (`*.tfrecord*`, else every data-looking
    file) or of a comma-separated list of globs; sorted.

    Raises:
        ValueError: nothing matched.
    """
    if fileio.isdir(data):
        files = fileio.glob(fileio.join(data, "*.tfrecord*"))
        if not files:
            files = [
                fileio.join(data, name)
                for name in fileio.listdir(data)
                if not name.endswith(_SKIP_SUFFIXES)
                and not name.startswith(".")
                and not fileio.isdir(fileio.join(data, name))
            ]
    else:
        files = [f for pattern in data.split(",") for f in fileio.glob(pattern)]
    if not files:
        raise ValueError(f"no record files found in {data}")
    return sorted(files)


def is_data_job_shard(path):
    """True for a file named as the data job names its shards."""
    return bool(SHARD_NAME.match(os.path.basename(str(path))))


def read_record_lengths(path):
    """(max_seq_length, max_predictions_per_seq) of the first record in `path`.

    For records without `metadata.json` (google-research/bert's scripts).

    Raises:
        ValueError (`configs.records.RecordError`): the file holds no
            records, is not TFRecords of pretraining Examples, or is damaged.
    """
    first = records.read_first_record(path)
    if first is None:
        raise records.RecordError(path, "holds no records")
    return example_proto.pretraining_record_lengths(first, path)


def first_record_lengths(files):
    """`read_record_lengths` of the first file that holds a record.

    Raises:
        ValueError: every file is empty (or one is damaged, naming it).
    """
    for path in files:
        first = records.read_first_record(path)
        if first is not None:
            return example_proto.pretraining_record_lengths(first, path)
    raise _no_records(files)


def _no_records(files):
    where = (os.path.dirname(files[0]) if files else "") or "."
    return ValueError(
        f"no records: all {len(files)} record file(s) in {where} are empty "
        "(did the data job write 0 instances?)"
    )


def check_records(
    files, max_seq_length, max_predictions_per_seq, *, walk_limit_bytes=4 << 30
):
    """Checks the record files before any training starts.

    Reads the first record of every file: its TFRecord framing and CRCs,
    the compression against the file name, and the record's lengths against
    the config. Local files are also walked frame by frame when they total
    at most `walk_limit_bytes` (gzip files counting 8x their size):
    `configs.records.count_records` checks the length CRCs and that no
    last record is cut short (about a microsecond per record); gzip files
    are inflated to their end. Remote files, and local ones past the
    limit, are checked as they are read (`RecordError` from the reader).
    Returns the number of files that hold records.

    Raises:
        ValueError (`configs.records.RecordError` naming the file): a file
            that is damaged or cut short, compressed unlike its name, or
            holds records of other lengths; gzip and uncompressed files
            mixed (the tf.data reader takes one compression for all); or no
            file holds any record.
    """
    files = list(files)
    if not files:
        raise ValueError("no record files")
    gz = [records.is_gzip_name(f) for f in files]
    if any(gz) and not all(gz):
        odd = files[gz.index(not gz[0])]
        raise records.RecordError(
            odd,
            "gzip and uncompressed record files are mixed "
            f"({files[0]} is {'' if gz[0] else 'not '}gzip); use one kind",
        )
    walk = not any(fileio.is_remote(f) for f in files)
    if walk:
        # Gzip files are walked by inflating them: about 8x the time a byte.
        cost = sum(os.path.getsize(f) * (8 if g else 1) for f, g in zip(files, gz))
        walk = cost <= walk_limit_bytes
    if any(fileio.is_remote(f) for f in files):
        # Remote reads wait on the network: fetch first records in parallel.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            firsts = list(pool.map(_first_or_error, files))
    else:
        firsts = map(_first_or_error, files)
    nonempty = 0
    for path, first in zip(files, firsts):
        if isinstance(first, Exception):
            raise first
        if first is None:
            continue
        nonempty += 1
        seq, pred = example_proto.pretraining_record_lengths(first, path)
        if (seq, pred) != (max_seq_length, max_predictions_per_seq):
            raise records.RecordError(
                path,
                f"records have max_seq_length={seq}, max_predictions_per_seq="
                f"{pred}; the config has {max_seq_length}, "
                f"{max_predictions_per_seq}",
            )
        if walk:
            _walk(path)
    if not nonempty:
        raise _no_records(files)
    return nonempty


def _walk(path):
    """Reads a whole file's framing (no data CRCs): catches a cut file."""
    if records.is_gzip_name(path):
        for _ in records.iter_record_blocks(path, check_crc=False):
            pass
    else:
        records.count_records(path)


def _first_or_error(path):
    try:
        return records.read_first_record(path)
    except ValueError as e:  # raised in file order by the caller
        return e


# === numpy batches (no TensorFlow) ===
def numpy_pretraining_batches(
    files,
    *,
    batch_size,
    max_seq_length,
    max_predictions_per_seq,
    seed,
    process_index=0,
    process_count=1,
    shuffle_buffer=10000,
    repeat=True,
    shuffle_files=None,
    prefetch=4,
    check_crc=True,
    drop_remainder=True,
):
    """Batches of pretraining features as numpy arrays, read in a thread.

    The same stream as `pretraining_dataset`: files sharded over processes
    (`files[process_index::process_count]`; with fewer files than
    processes every process reads all files and keeps every
    `process_count`-th record), the file order shuffled each epoch (the
    same order on every process), up to 8 files interleaved record by
    record, records shuffled in a `shuffle_buffer` (tf.data's algorithm),
    repeated, batched with drop_remainder. A background thread reads and
    decodes up to `prefetch` batches ahead.

    Args:
        files: record file paths (every process passes the same list).
        batch_size: records per batch from THIS process.
        max_seq_length, max_predictions_per_seq: record lengths.
        seed: shuffle seed (pass seed + first step on resume, for a fresh
            order rather than a replay).
        process_index, process_count: this process and the number of
            processes (hosts) reading the same files.
        shuffle_buffer: records in the shuffle buffer; 0 = no shuffling at
            all (files and records in order, as tf.data with
            `is_training=False`).
        repeat: cycle over the files forever; False = one pass.
        shuffle_files: shuffle the file order each epoch (default: when
            `shuffle_buffer > 0`).
        prefetch: batches decoded ahead.
        drop_remainder: drop a last batch of fewer than `batch_size`
            records (training); False keeps it (one pass of evaluation).
        check_crc: verify the masked CRC32Cs of every record (True, or
            "numpy" to force the numpy CRC32C; see
            `configs.records.iter_record_blocks`).

    Returns an iterator (`NumpyBatches`; `close()` stops its thread) of
    dicts: int32 `[batch_size, max_seq_length]` `input_ids`/`input_mask`/
    `segment_ids`; int32 `[batch_size, p]` `masked_lm_positions`/
    `masked_lm_ids`; float32 `[batch_size, p]` `masked_lm_weights`; int32
    `[batch_size, 1]` `next_sentence_labels` (p = max_predictions_per_seq).
    Errors of the files (`configs.records.RecordError`, a ValueError naming
    the file) are raised by `next()`.
    """
    files = list(files)
    if not files:
        raise ValueError("no record files")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if shuffle_files is None:
        shuffle_files = shuffle_buffer > 0

    def batches():
        stream = _record_stream(
            files,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            repeat=repeat,
            shuffle_files=shuffle_files,
            check_crc=check_crc,
            lengths=(max_seq_length, max_predictions_per_seq),
        )
        if shuffle_buffer > 0:
            rng = np.random.default_rng([seed, 1, process_index])
            stream = _shuffle(stream, shuffle_buffer, rng)
        where = (
            files[0]
            if len(files) == 1
            else f"{len(files)} files in " + (os.path.dirname(files[0]) or ".")
        )
        while True:
            batch = list(itertools.islice(stream, batch_size))
            if not batch or (len(batch) < batch_size and drop_remainder):
                return
            yield example_batches.decode_pretraining_batch(
                batch, max_seq_length, max_predictions_per_seq, path=where
            )
            if len(batch) < batch_size:
                return

    return NumpyBatches(batches(), prefetch=prefetch)


class NumpyBatches:
    """An iterator of batches made by a background thread.

    `next()` returns the next batch, or raises the reader's error (e.g. a
    `RecordError` naming a damaged file) or StopIteration at the end of a
    finite stream. `close()` (or leaving a `with` block, or garbage
    collection) stops the thread.
    """

    _END = object()

    def __init__(self, batches, prefetch=4):
        self._queue = queue.Queue(max(1, prefetch))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_produce,
            args=(batches, self._queue, self._stop, self._END),
            name="numpy-pretraining-batches",
            daemon=True,
        )
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._done = True
            raise item.error
        return item

    def close(self):
        self._stop.set()
        self._done = True
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self._stop.set()


class _Failure:
    def __init__(self, error):
        self.error = error


def _produce(batches, out, stop, end):
    """The thread: puts batches (then `end`, or a `_Failure`) on `out`."""

    def put(item):
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for batch in batches:
            if not put(batch):
                return
        put(end)
    except BaseException as e:  # handed to the consumer's next()
        put(_Failure(e))
    finally:
        batches.close()


def _record_stream(
    files,
    *,
    seed,
    process_index,
    process_count,
    repeat,
    shuffle_files,
    check_crc,
    lengths,
):
    """Serialized records in tf.data's order (see `pretraining_dataset`)."""
    shard_records = process_count > 1 and len(files) < process_count
    if process_count > 1 and not shard_records:
        files = files[process_index::process_count]
    # The same seed on every process: with record sharding all processes
    # must read the same stream.
    rng = np.random.default_rng([seed, 0])

    def file_order():
        while True:
            if shuffle_files:
                yield from (files[i] for i in rng.permutation(len(files)))
            else:
                yield from files
            if not repeat:
                return

    def open_file(path):
        blocks = records.iter_record_blocks(path, check_crc=check_crc)
        first = next(blocks, None)
        if first is None:
            return iter(())
        # The first record's lengths, checked once per file opened, so that
        # records of other lengths are reported with their file's name.
        got = example_proto.pretraining_record_lengths(first[0], path)
        if got != lengths:
            raise records.RecordError(
                path,
                f"records have max_seq_length={got[0]}, max_predictions_per_seq="
                f"{got[1]}; the config has {lengths[0]}, {lengths[1]}",
            )
        return itertools.chain(first, itertools.chain.from_iterable(blocks))

    stream = _interleave(
        file_order(), min(CYCLE_LENGTH, len(files)), open_file, len(files)
    )
    if shard_records:
        stream = itertools.islice(stream, process_index, None, process_count)
    return stream


def _interleave(paths, cycle_length, open_file, files_per_epoch):
    """tf.data's deterministic `interleave(cycle_length, block_length=1)`.

    Slot by slot, one record each; an exhausted slot is emptied and the
    cycle moves on; an empty slot opens the next file when it comes round.
    Stops with a ValueError when a whole epoch of files held no record
    (an endless repeat would otherwise hang).
    """
    slots = [None] * cycle_length
    paths = iter(paths)
    end_of_input = False
    num_open = 0
    i = 0
    empty_files = 0
    while not end_of_input or num_open:
        it = slots[i]
        if it is not None:
            record = next(it, None)
            if record is not None:
                empty_files = 0
                yield record
            else:
                slots[i] = None
                num_open -= 1
            i = (i + 1) % cycle_length
        elif not end_of_input:
            path = next(paths, None)
            if path is None:
                end_of_input = True
                continue
            slots[i] = open_file(path)
            num_open += 1
            empty_files += 1
            if empty_files > files_per_epoch + cycle_length:
                raise ValueError(f"no records in any of {files_per_epoch} file(s)")
        else:
            i = (i + 1) % cycle_length


def _shuffle(stream, size, rng):
    """tf.data's `shuffle(size)`: fill a buffer, then emit a random slot and
    refill it; at the end emit the rest in random order."""
    buffer = list(itertools.islice(stream, size))
    draws = iter(())
    for record in stream:
        j = next(draws, None)
        if j is None:
            draws = iter(rng.integers(0, len(buffer), 4096).tolist())
            j = next(draws)
        yield buffer[j]
        buffer[j] = record
    rng.shuffle(buffer)
    yield from buffer


# === tf.data (TensorFlow) ===
def _compression(path):
    return "GZIP" if path.endswith(".gz") else ""


def pretraining_feature_spec(max_seq_length, max_predictions_per_seq):
    """`tf.io.parse_example` spec for pretraining records."""
    import tensorflow as tf

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
    """Batches of pretraining features for one input pipeline (tf.data).

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
    import tensorflow as tf

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
        cycle_length=min(CYCLE_LENGTH, len(files)),
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
    import tensorflow as tf

    # TPUs (and XLA) want int32 ids; TFRecords only store int64.
    return {
        k: tf.cast(v, tf.int32) if v.dtype == tf.int64 else v for k, v in batch.items()
    }
