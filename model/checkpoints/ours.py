"""This project's own run directories as checkpoints.

A pretraining `model_dir` holds `config.yaml` and `encoder.weights.h5`
(the backbone; the heads are in `checkpoints/`: TensorFlow checkpoints or,
from the JAX trainer, `ckpt-N.npz`). A fine-tuning `model_dir` holds
`config.yaml` and `best.weights.h5` (backbone + classification layer).
Keras weight files name our layers, so no mapping is needed.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np

from configs import features, fileio
from configs.loader import RESOLVED_CONFIG_FILE, load_resolved
from configs.schema import ConfigError

ENCODER_WEIGHTS_FILE = "encoder.weights.h5"
FINETUNED_WEIGHTS_FILE = "best.weights.h5"
CHECKPOINT_SUBDIR = "checkpoints"


def kind(path: str) -> str:
    """ "pretraining", "finetuned", "data" (a data job's output), "run"
    (config.yaml without weights) or "" (not ours)."""
    if not fileio.isdir(path):
        return ""
    if fileio.exists(fileio.join(path, features.METADATA_FILE)):
        return "data"
    if not fileio.exists(fileio.join(path, RESOLVED_CONFIG_FILE)):
        return ""
    if fileio.exists(fileio.join(path, ENCODER_WEIGHTS_FILE)):
        return "pretraining"
    if fileio.exists(fileio.join(path, FINETUNED_WEIGHTS_FILE)):
        return "finetuned"
    return "run"


def _local_copy(path):
    """h5 files load from local disk only; copies gs:// files to a temp dir."""
    if "://" not in path:
        return path
    local = os.path.join(fileio.scratch_dir(), os.path.basename(path))
    fileio.copy(path, local, overwrite=True)
    return local


def load_backbone(backbone, path: str, which: str) -> list[str]:
    """Loads our run's encoder into `backbone`; returns notes for the user."""
    if which == "pretraining":
        backbone.load_weights(_local_copy(fileio.join(path, ENCODER_WEIGHTS_FILE)))
        return []
    # A fine-tuning run: its whole classifier's weights, of which we keep
    # the encoder (the classification layer is built and dropped).
    from model.bert_classifier import BertClassifier

    cfg = load_resolved(path)
    pooling = cfg.finetune.pooling if cfg.finetune.pooling != "auto" else "cls"
    classifier = BertClassifier(
        backbone, max(len(cfg.finetune.labels), 1), pooling=pooling
    )
    classifier.load_weights(_local_copy(fileio.join(path, FINETUNED_WEIGHTS_FILE)))
    return [
        f"{path} is a fine-tuning run: its encoder is used, its "
        f"classification layer ({len(cfg.finetune.labels)} labels) is not"
    ]


def load_pretraining_heads(pretrainer, path: str) -> list[str]:
    """Loads a pretraining run's MLM and sentence heads (and encoder) from
    its newest checkpoint in `checkpoints/` (TensorFlow or JAX `.npz`)."""
    directory = fileio.join(path, CHECKPOINT_SUBDIR)
    npz = _newest_npz(directory)
    if npz:
        with np.load(io.BytesIO(fileio.read_bytes(npz))) as arrays:
            for v in pretrainer.weights:
                name = "model/" + v.path
                if name in arrays.files:
                    v.assign(arrays[name])
        return []
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(directory) if fileio.isdir(directory) else None
    if not latest:
        return [f"{path} has no checkpoints/: the pretraining heads are initialised"]
    tf.train.Checkpoint(model=pretrainer).restore(latest).expect_partial()
    return []


def _newest_npz(directory):
    if not fileio.isdir(directory):
        return ""
    steps = [
        int(m.group(1))
        for n in fileio.listdir(directory)
        for m in [re.match(r"^ckpt-(\d+)\.npz$", n)]
        if m
    ]
    return fileio.join(directory, f"ckpt-{max(steps)}.npz") if steps else ""
