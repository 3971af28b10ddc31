"""Tiny pretraining records written by the tests themselves (a helper module)."""

import numpy as np

from configs import features
from configs.metadata import write_metadata

TINY_VOCAB_SIZE = 120
TINY_SEQ = 32
TINY_PRED = 5


def tiny_vocab(size=TINY_VOCAB_SIZE):
    """[PAD] [UNK] [CLS] [SEP] [MASK] [unused0] then ordinary words."""
    specials = list(features.RESERVED_TOKENS) + ["[unused0]"]
    return specials + [f"w{i}" for i in range(size - len(specials))]


def make_examples(
    num, seq=TINY_SEQ, pred=TINY_PRED, vocab_size=TINY_VOCAB_SIZE, seed=0
):
    """Random but well-formed instances: dicts of numpy arrays."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(num):
        length = rng.randint(seq // 2, seq + 1)
        len_a = rng.randint(1, length - 3)
        ids = rng.randint(6, vocab_size, size=length)
        ids[0] = 2
        ids[len_a + 1] = 3
        ids[length - 1] = 3
        segment = np.zeros(seq, np.int64)
        segment[len_a + 2 : length] = 1
        candidates = [i for i in range(1, length - 1) if i != len_a + 1]
        num_pred = min(pred, max(1, int(round(length * 0.15))))
        positions = np.sort(rng.choice(candidates, num_pred, replace=False))
        original = ids[positions].copy()
        ids[positions] = 4
        pad = lambda a, n: np.pad(a, (0, n - len(a)))  # noqa: E731
        out.append(
            {
                features.INPUT_IDS: pad(ids, seq),
                features.INPUT_MASK: pad(np.ones(length, np.int64), seq),
                features.SEGMENT_IDS: segment,
                features.MASKED_LM_POSITIONS: pad(positions, pred),
                features.MASKED_LM_IDS: pad(original, pred),
                features.MASKED_LM_WEIGHTS: pad(np.ones(num_pred, np.float32), pred),
                features.NEXT_SENTENCE_LABELS: np.array([rng.randint(2)]),
            }
        )
    return out


def write_records(
    directory,
    num=64,
    num_shards=2,
    seq=TINY_SEQ,
    pred=TINY_PRED,
    vocab_size=TINY_VOCAB_SIZE,
    metadata=True,
    seed=0,
    compression=None,
    vocab=None,
):
    """Writes `num` records over `num_shards` files (+ metadata.json, vocab.txt).

    `vocab` (a token list of `vocab_size` tokens) replaces the tiny one
    (e.g. a checkpoint's, for continued pretraining).

    With metadata (the data job's output) the files are named as the data
    job names its shards (`pretraining-SSSSS-of-NNNNN.tfrecord`); without,
    as reference records (`reference-SSSSS.tfrecord`, google-research/bert's
    scripts take any name). `compression="GZIP"` writes `*.tfrecord.gz`.
    """
    import tensorflow as tf

    directory = str(directory)
    tf.io.gfile.makedirs(directory)
    examples = make_examples(num, seq, pred, vocab_size, seed)
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    names = [
        (
            f"pretraining-{i:05d}-of-{num_shards:05d}"
            if metadata
            else f"reference-{i:05d}"
        )
        + suffix
        for i in range(num_shards)
    ]
    options = tf.io.TFRecordOptions(compression_type=compression or "")
    writers = [tf.io.TFRecordWriter(f"{directory}/{name}", options) for name in names]
    for i, ex in enumerate(examples):
        feats = {}
        for name, value in ex.items():
            if value.dtype == np.float32:
                feats[name] = tf.train.Feature(
                    float_list=tf.train.FloatList(value=value)
                )
            else:
                feats[name] = tf.train.Feature(
                    int64_list=tf.train.Int64List(value=value)
                )
        example = tf.train.Example(features=tf.train.Features(feature=feats))
        writers[i % num_shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    vocab = vocab or tiny_vocab(vocab_size)
    assert len(vocab) == vocab_size
    with open(f"{directory}/vocab.txt", "w") as f:
        f.write("\n".join(vocab) + "\n")
    if metadata:
        write_metadata(
            directory,
            {
                "format_version": features.METADATA_FORMAT_VERSION,
                "kind": "pretraining",
                "num_examples": num,
                "num_shards": num_shards,
                "max_seq_length": seq,
                "max_predictions_per_seq": pred,
                "sentence_task": "nsp",
                "masked_lm_prob": 0.15,
                "dupe_factor": 1,
                "seed": seed,
                "whole_word_mask": False,
                "do_lower_case": True,
                "vocab_size": vocab_size,
                "vocab_sha256": features.vocab_sha256(f"{directory}/vocab.txt"),
                "inputs": ["test"],
                "tool_version": "test",
            },
        )
    return directory


def tiny_flags(data, model_dir, **extra):
    """Flags for `model.pretrain.run` on the tiny records."""
    flags = {
        "data": data,
        "model_dir": model_dir,
        "steps": 4,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "warmup_steps": 1,
        "save_every": 2,
        "log_every": 1,
        "seed": 1,
        "precision": "float32",
        "jit_compile": "false",
    }
    flags.update(extra)
    argv = [f"--{k}={v}" for k, v in flags.items()]
    for key, value in [
        ("model.vocabulary_size", TINY_VOCAB_SIZE),
        ("model.num_layers", 2),
        ("model.num_heads", 2),
        ("model.hidden_dim", 16),
        ("model.intermediate_dim", 32),
        ("model.max_sequence_length", 64),
        ("model.dropout", 0.0),
        ("data.max_seq_length", TINY_SEQ),
        ("data.max_predictions_per_seq", TINY_PRED),
        ("finetune.max_seq_length", 32),
        ("pretrain.shuffle_buffer", 16),
    ]:
        argv.append(f"--set={key}={value}")
    return argv
