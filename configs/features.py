"""The data contract shared by the Beam writers and the tf.data readers.

Feature names are google-research/bert's, so records move unchanged between
this project, google-research/bert and the TF Model Garden. Both `pipelines/`
and `model/` import these names from here and nowhere else (the fix for the
Model Garden's `use_v2_feature_names` drift). This module imports no
TensorFlow: dtypes are named as strings ("int64", "float32").
"""

from __future__ import annotations

import hashlib

# === Feature names (TFRecord keys == model input keys) ===
INPUT_IDS = "input_ids"
INPUT_MASK = "input_mask"
SEGMENT_IDS = "segment_ids"
MASKED_LM_POSITIONS = "masked_lm_positions"
MASKED_LM_IDS = "masked_lm_ids"
MASKED_LM_WEIGHTS = "masked_lm_weights"
NEXT_SENTENCE_LABELS = "next_sentence_labels"
LABEL_IDS = "label_ids"

# Feature name -> (dtype, length key). The length key says which setting
# gives the feature's fixed length: "seq" = max_seq_length,
# "pred" = max_predictions_per_seq, "one" = 1.
PRETRAINING_FEATURES = {
    INPUT_IDS: ("int64", "seq"),
    INPUT_MASK: ("int64", "seq"),
    SEGMENT_IDS: ("int64", "seq"),
    MASKED_LM_POSITIONS: ("int64", "pred"),
    MASKED_LM_IDS: ("int64", "pred"),
    MASKED_LM_WEIGHTS: ("float32", "pred"),
    NEXT_SENTENCE_LABELS: ("int64", "one"),
}
CLASSIFICATION_FEATURES = {
    INPUT_IDS: ("int64", "seq"),
    INPUT_MASK: ("int64", "seq"),
    SEGMENT_IDS: ("int64", "seq"),
    LABEL_IDS: ("int64", "one"),
}


def feature_lengths(
    kind: str, max_seq_length: int, max_predictions_per_seq: int = 0
) -> dict[str, tuple[str, int]]:
    """Returns {feature name: (dtype, fixed length)} for a record kind.

    Args:
        kind: "pretraining" or "classification".
        max_seq_length: tokens per sequence, padding included.
        max_predictions_per_seq: masked-LM slots per sequence (pretraining).
    """
    specs = {
        "pretraining": PRETRAINING_FEATURES,
        "classification": CLASSIFICATION_FEATURES,
    }
    if kind not in specs:
        raise ValueError(f"unknown record kind {kind!r}")
    lengths = {"seq": max_seq_length, "pred": max_predictions_per_seq, "one": 1}
    return {
        name: (dtype, lengths[length_key])
        for name, (dtype, length_key) in specs[kind].items()
    }


# === Special tokens ===
# Looked up in the vocabulary *by name*: nothing hard-codes Google's ids
# (101/102/103), so learned vocabularies and Google's both work.
PAD = "[PAD]"
UNK = "[UNK]"
CLS = "[CLS]"
SEP = "[SEP]"
MASK = "[MASK]"
RESERVED_TOKENS = (PAD, UNK, CLS, SEP, MASK)
REQUIRED_TOKENS = (PAD, UNK, CLS, SEP, MASK)
UNUSED_PREFIX = "[unused"

# Sentence-pair labels (DESIGN.md): 0 = B really follows A (NSP) / in order
# (SOP); 1 = random B (NSP) / swapped (SOP).
SENTENCE_TASKS = ("nsp", "sop")
IS_NEXT = 0
NOT_NEXT = 1

METADATA_FILE = "metadata.json"
# The data job's held-out split (`--eval_documents`): `OUTPUT_DIR/eval/`,
# shards + metadata.json of its own, never among the training shards.
EVAL_SPLIT_DIR = "eval"
# Shard names of the data jobs: `<prefix>-SSSSS-of-NNNNN.tfrecord[.gz]`.
PRETRAINING_SHARD_PREFIX = "pretraining"
CLASSIFICATION_SHARD_PREFIX = "classification"
METADATA_FORMAT_VERSION = 1


# === Vocabulary helpers (pure Python, no TensorFlow) ===
def read_vocab(path: str) -> list[str]:
    """Reads a one-token-per-line vocabulary; line i is id i.

    Accepts local paths and remote ones (gs://, via tf.io.gfile; see
    `configs.fileio`).
    """
    data = _read_bytes(path)
    text = data.decode("utf-8")
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return [t.rstrip("\r") for t in tokens]


def vocab_sha256(path: str) -> str:
    """sha256 (hex) of the vocabulary file's bytes, recorded in metadata."""
    return hashlib.sha256(_read_bytes(path)).hexdigest()


def special_token_ids(vocab: list[str]) -> dict[str, int]:
    """Maps each special token to its id; raises ValueError naming any missing."""
    index = {tok: i for i, tok in enumerate(vocab)}
    missing = [t for t in REQUIRED_TOKENS if t not in index]
    if missing:
        raise ValueError(
            f"vocabulary lacks required special token(s) {', '.join(missing)}"
        )
    return {t: index[t] for t in REQUIRED_TOKENS}


def is_special_token(token: str) -> bool:
    """True for bracketed control tokens ([PAD], [CLS], [unused7], ...)."""
    return len(token) > 2 and token.startswith("[") and token.endswith("]")


def _read_bytes(path: str) -> bytes:
    from configs import fileio  # TensorFlow only for remote paths

    return fileio.read_bytes(path)
