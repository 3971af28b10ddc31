"""Pretrained checkpoints: one entry for every format we read.

    ckpt = checkpoints.inspect(path)        # what it is; no weights read
    backbone = BertBackbone.from_model_config(ckpt.model_config)
    notes = checkpoints.load_backbone(ckpt, backbone)
    notes += checkpoints.load_pretraining_heads(ckpt, pretrainer)

Formats, one module each: `ours` (our pretraining and fine-tuning
`model_dir`s), `tf1` (google-research/bert's `bert_model.ckpt`),
`huggingface` (a transformers / sentence-transformers BERT directory, read
from safetensors without torch). `inspect` imports TensorFlow only to test
for a TF1 checkpoint, after the other formats were ruled out.
"""

from __future__ import annotations

import dataclasses
import os

from configs import features, fileio
from configs.schema import ConfigError, ModelConfig
from model.checkpoints import huggingface, ours

EXPECTED = (
    "expected our pretraining or fine-tuning model_dir, a Hugging Face BERT "
    "directory (config.json + model.safetensors) or a google-research/bert "
    "checkpoint prefix (.../bert_model.ckpt)"
)


@dataclasses.dataclass
class Checkpoint:
    """What `inspect` found at a path.

    Attributes:
        kind: "pretraining" / "finetuned" (ours), "tf1" or "huggingface".
        path: the directory or TF1 prefix.
        model_config: the encoder's sizes (None for our runs: the caller
            reads their config.yaml, which holds more than the model).
        vocab_path: the checkpoint's vocabulary file ("" if unknown).
        vocab: its tokens in id order (None if unknown).
        do_lower_case: the checkpoint's casing (None if it does not say).
        pooling: "mean"/"cls" if the checkpoint says how it pools, else None.
    """

    kind: str
    path: str
    model_config: ModelConfig | None = None
    vocab_path: str = ""
    vocab: list | None = None
    do_lower_case: bool | None = None
    pooling: str | None = None

    @property
    def what(self) -> str:
        return {
            "pretraining": "our pretraining run",
            "finetuned": "our fine-tuning run: its encoder",
            "tf1": "google-research/bert checkpoint",
            "huggingface": "Hugging Face BERT checkpoint",
        }[self.kind]

    @property
    def description(self) -> str:
        return f"{self.what} {self.path}"


def inspect(path: str) -> Checkpoint:
    """Detects the format at `path` and reads its config and vocabulary.

    Raises:
        ConfigError: one line saying what `path` is and what is expected
            (a data directory, a directory of another model, a damaged or
            unsupported checkpoint, a vocabulary of the wrong size).
    """
    path = path.rstrip("/") if not path.endswith("://") else path
    which = ours.kind(path)
    if which == "data":
        raise ConfigError(
            f"{path} is a data directory (records with {features.METADATA_FILE}), "
            f"not a checkpoint; {EXPECTED}"
        )
    if which == "run":
        raise ConfigError(
            f"{path} is a run directory without {ours.ENCODER_WEIGHTS_FILE} or "
            f"{ours.FINETUNED_WEIGHTS_FILE} (not finished?); {EXPECTED}"
        )
    if which:
        vocab_path = fileio.join(path, "vocab.txt")
        vocab_path = vocab_path if fileio.exists(vocab_path) else ""
        return Checkpoint(which, path, vocab_path=vocab_path)
    if huggingface.is_checkpoint(path):
        return _inspect_huggingface(path)
    tf1 = _tf1_prefix(path)
    if tf1:
        from model.checkpoints import tf1 as tf1_format

        vocab_path = fileio.join(os.path.dirname(tf1), "vocab.txt")
        return Checkpoint(
            "tf1",
            tf1,
            model_config=tf1_format.model_config_from_checkpoint(tf1),
            vocab_path=vocab_path if fileio.exists(vocab_path) else "",
        )
    if fileio.isdir(path):
        raise ConfigError(f"{path} holds no checkpoint; {EXPECTED}")
    if fileio.exists(path):
        raise ConfigError(f"{path} is a file, not a checkpoint; {EXPECTED}")
    raise ConfigError(f"{path} does not exist; {EXPECTED}")


def _inspect_huggingface(path):
    top = path
    inner = huggingface.model_directory(path)
    model_config, _ = huggingface.read_config(inner)
    huggingface.weight_files(inner)  # a missing/other-format file: now
    vocab, vocab_path = huggingface.read_vocab(inner)
    if len(vocab) != model_config.vocabulary_size:
        raise ConfigError(
            f"{vocab_path} has {len(vocab)} tokens but "
            f"{fileio.join(inner, huggingface.CONFIG_FILE)} says vocab_size "
            f"{model_config.vocabulary_size}"
        )
    try:
        features.special_token_ids(vocab)
    except ValueError as e:
        raise ConfigError(f"{vocab_path}: {e}")
    return Checkpoint(
        "huggingface",
        top,
        model_config=model_config,
        vocab_path=vocab_path if vocab_path.endswith(".txt") else "",
        vocab=vocab,
        do_lower_case=huggingface.read_lower_case(inner),
        pooling=huggingface.read_pooling(top),
    )


def _tf1_prefix(path):
    """The TF1 checkpoint prefix at `path` (a prefix or a directory holding
    one) if it has Google BERT names, else ""."""
    import tensorflow as tf

    from model.checkpoints import tf1

    prefix = path
    if fileio.isdir(path):
        prefix = tf.train.latest_checkpoint(path) or ""
        if not prefix:
            index = fileio.glob(fileio.join(path, "*.ckpt.index"))
            prefix = index[0][: -len(".index")] if index else ""
    return prefix if prefix and tf1.is_google_checkpoint(prefix) else ""


def load_backbone(ckpt: Checkpoint, backbone) -> list[str]:
    """Assigns the checkpoint's encoder to a built `backbone` of its sizes.
    Returns notes for the user (one line each)."""
    if ckpt.kind in ("pretraining", "finetuned"):
        return ours.load_backbone(backbone, ckpt.path, ckpt.kind)
    if ckpt.kind == "huggingface":
        return huggingface.load_backbone(backbone, ckpt.path)
    from model.checkpoints import tf1

    tf1.load_google_checkpoint(backbone, ckpt.path)
    return []


def load_pretraining_heads(ckpt: Checkpoint, pretrainer) -> list[str]:
    """Assigns the encoder and the MLM/NSP heads where the checkpoint has
    them; returns one note per part initialised instead."""
    notes = load_backbone(ckpt, pretrainer.backbone)
    if ckpt.kind == "huggingface":
        return notes + huggingface.load_pretraining_heads(pretrainer, ckpt.path)
    if ckpt.kind == "tf1":
        from model.checkpoints import tf1

        tf1.load_google_checkpoint(pretrainer.backbone, ckpt.path, pretrainer)
        return notes
    if ckpt.kind == "pretraining":
        return notes + ours.load_pretraining_heads(pretrainer, ckpt.path)
    return notes + ["a fine-tuning run has no pretraining heads: initialised"]


def checkpoint_vocab(ckpt: Checkpoint):
    """The checkpoint's tokens, read if not yet (None if it has none)."""
    if ckpt.vocab is None and ckpt.vocab_path:
        ckpt.vocab = features.read_vocab(ckpt.vocab_path)
    return ckpt.vocab


def check_vocab(ckpt: Checkpoint, vocab: list, vocab_path: str) -> None:
    """Refuses a vocabulary that is not the checkpoint's: compared token by
    token (same size but reordered ids would fine-tune on scrambled
    embeddings). Raises ConfigError naming the first difference."""
    own = checkpoint_vocab(ckpt)
    if own is None:
        return
    if list(own) == list(vocab):
        return
    if len(own) != len(vocab):
        detail = f"{len(vocab)} tokens, the checkpoint's {len(own)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(own, vocab)) if a != b)
        detail = f"id {i} is {vocab[i]!r} there but {own[i]!r} in the checkpoint's"
    raise ConfigError(
        f"vocabulary {vocab_path} is not the checkpoint's "
        f"({ckpt.vocab_path or ckpt.path}): {detail}; leave out --vocab to use "
        "the checkpoint's"
    )
