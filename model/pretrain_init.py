"""`--init_checkpoint` of `model.pretrain`: the config it implies, and
loading its encoder and heads (any format `model.checkpoints` reads)."""

import dataclasses
import os

from configs import features, fileio
from configs.schema import ConfigError


def config_from_init_checkpoint(cfg, path):
    """The encoder's sizes, activation, casing and vocabulary from
    `--init_checkpoint` (any format `model.checkpoints` reads), so that the
    records are checked against the checkpoint's vocabulary (sha256) before
    any work. `model.dropout` stays the run's."""
    if not path:
        return cfg
    from model import checkpoints

    ckpt = checkpoints.inspect(path)
    model = ckpt.model_config
    data = cfg.data
    if model is None:  # our run: its config.yaml
        from configs.loader import load_resolved

        recorded = load_resolved(ckpt.path)
        model, data = recorded.model, dataclasses.replace(
            data, do_lower_case=recorded.data.do_lower_case
        )
    if ckpt.do_lower_case is not None:
        data = dataclasses.replace(data, do_lower_case=ckpt.do_lower_case)
    vocab_path = ckpt.vocab_path
    if not vocab_path and ckpt.vocab:  # tokenizer.json alone
        vocab_path = os.path.join(fileio.scratch_dir("vocab-"), "vocab.txt")
        fileio.write_atomic(vocab_path, "\n".join(ckpt.vocab) + "\n")
    if vocab_path:
        if cfg.data.vocab_file and cfg.data.vocab_file != vocab_path:
            checkpoints.check_vocab(
                ckpt, features.read_vocab(cfg.data.vocab_file), cfg.data.vocab_file
            )
        data = dataclasses.replace(data, vocab_file=vocab_path)
    model = dataclasses.replace(model, dropout=cfg.model.dropout)
    print(f"model config from {ckpt.description}", flush=True)
    # The recorded fine-tuning/export lengths (used later, from this run)
    # stay within the checkpoint's position table, as model.finetune does;
    # data.max_seq_length describes the records and is checked against them.
    positions = model.max_sequence_length
    cfg = cfg.replace(
        finetune=dataclasses.replace(
            cfg.finetune, max_seq_length=min(cfg.finetune.max_seq_length, positions)
        ),
        export=dataclasses.replace(
            cfg.export, max_seq_length=min(cfg.export.max_seq_length, positions)
        ),
    )
    return cfg.replace(model=model, data=data).validate()


def load_init_checkpoint(path, backbone, pretrainer):
    """Encoder and heads from `path`; one note per part initialised."""
    from model import checkpoints

    try:
        ckpt = checkpoints.inspect(path)
        notes = checkpoints.load_pretraining_heads(ckpt, pretrainer)
    except ConfigError as e:
        raise SystemExit(f"error: --init_checkpoint: {e}") from None
    for note in notes:
        print(f"note: {note}", flush=True)
