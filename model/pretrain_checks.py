"""Checks of `model.pretrain`'s inputs and outputs, before anything is built.

- `check_data`: the records against the config (`metadata.json`, the first
  record of every file), the vocabulary found beside them; one line on any
  mismatch.
- `check_eval_data`: the held-out records (`--eval_data`, else `eval/`
  beside the records) against the same config, with the same line.
- `check_masking_rate`: a dynamic-masking rate whose masks fit the slots.
- `check_resumable`: `model_dir`'s history (resume, `--overwrite`, a model
  that differs from the run's `config.yaml`).
- `copy_vocab`: the records' vocabulary into `model_dir`.

TensorFlow-free for local paths (`--help` and the checks import none).
"""

import dataclasses
import os

from configs import features, fileio
from configs.metadata import check_compatible, held_out_split, read_metadata
from configs.schema import ConfigError, ModelConfig
from model import training


def check_data(cfg, data, vocabulary_size_set=True, model_dir=""):
    """Checks records against the config; returns (cfg, files, meta, vocab).

    Raises ConfigError / ValueError with one line on any mismatch, before
    anything is built. Records without metadata.json are accepted with a
    notice (reference records: google-research/bert's scripts); their
    lengths are then read from the first record and put into the config.
    A directory of the data job's own shards without metadata.json is
    refused: the job that wrote them did not finish (metadata.json is its
    commit marker), so a shard may be cut short. The first record of every
    file is then read (`data.check_records`): no records at all, damaged
    files, compression unlike the file name and records of other lengths
    stop here, naming the file. TensorFlow-free for local paths.
    """
    from model import data as data_lib

    files = data_lib.list_record_files(data)
    data_dir = data if fileio.isdir(data) else os.path.dirname(files[0])
    meta = read_metadata(data_dir)
    if meta is None:
        ours = [f for f in files if data_lib.is_data_job_shard(f)]
        if ours:
            raise ConfigError(
                f"{data_dir} holds data-job shards ({os.path.basename(ours[0])}"
                f", ...) but no {features.METADATA_FILE}: the job that wrote "
                "them did not finish; rerun it (with --overwrite)"
            )
    vocab_path = find_vocab(cfg, data_dir, meta)
    vocab_sha = features.vocab_sha256(vocab_path) if cfg.data.vocab_file else None
    if not vocabulary_size_set:
        cfg = vocabulary_size_from_data(cfg, meta, vocab_path, model_dir)
    if meta is not None:
        try:
            _check_metadata(meta, cfg, vocab_sha)
        except ConfigError as e:
            size = meta.get("vocab_size")
            if size is None or size == cfg.model.vocabulary_size:
                raise
            raise ConfigError(
                f"{e} (model.vocabulary_size is set to "
                f"{cfg.model.vocabulary_size} by a --config or --set: drop it "
                f"to take the records' size, or pass --set "
                f"model.vocabulary_size={size})"
            ) from None
    else:
        seq, pred = data_lib.first_record_lengths(files)
        print(
            f"note: no {features.METADATA_FILE} in {data_dir}: lengths read "
            f"from the records (max_seq_length={seq}, "
            f"max_predictions_per_seq={pred}), vocabulary from the config",
            flush=True,
        )
        cfg = cfg.replace(
            data=dataclasses.replace(
                cfg.data, max_seq_length=seq, max_predictions_per_seq=pred
            )
        ).validate()
    data_lib.check_records(
        files, cfg.data.max_seq_length, cfg.data.max_predictions_per_seq
    )
    vocab = None
    if cfg.pretrain.masking == "dynamic":
        if vocab_path is None:
            raise ConfigError(
                "--masking=dynamic needs the vocabulary: set data.vocab_file "
                "or put vocab.txt beside the records"
            )
        vocab = features.read_vocab(vocab_path)
        if len(vocab) != cfg.model.vocabulary_size:
            raise ConfigError(
                f"vocabulary {vocab_path} has {len(vocab)} tokens, "
                f"model.vocabulary_size is {cfg.model.vocabulary_size}"
            )
        features.special_token_ids(vocab)
        check_masking_rate(cfg)
    elif cfg.pretrain.masking_rate or cfg.pretrain.max_predictions_per_seq:
        raise ConfigError(
            "pretrain.masking_rate and pretrain.max_predictions_per_seq are "
            "dynamic masking's: pass --masking=dynamic (static masks are the "
            "records' own)"
        )
    if vocab_path:
        # Recorded so that `train` can copy it into model_dir, where
        # `model.finetune --init_checkpoint=model_dir` finds it.
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, vocab_file=vocab_path))
    sha = features.vocab_sha256(vocab_path) if vocab_path else None
    cfg = check_eval_data(cfg, data_dir, sha or (meta or {}).get("vocab_sha256"))
    return cfg, files, meta, vocab


def check_eval_data(cfg, data_dir, vocab_sha256=None):
    """`cfg` with `pretrain.eval_data` resolved, its records checked.

    The held-out records are `--eval_data`, else `data_dir/eval` when it
    holds a `metadata.json` (what `pipelines.pretraining_data
    --eval_documents` writes; said in one line), else none ("" in the
    config; `none` turns the default off). They must match the model as
    the training records do (the same `check_compatible` line, and the
    training vocabulary's sha256 when known); no records at all is one
    line too. Nothing of them is read as training data: a records
    directory is read without its subdirectories.
    """
    from model import data as data_lib

    p = cfg.pretrain
    where = p.eval_data
    if where == "none":
        return cfg
    if not where:
        auto = held_out_split(data_dir)  # the data job's --eval_documents
        if auto is None:
            return cfg
        where = auto
        print(
            f"held-out evaluation on {auto} (beside the records; "
            "--eval_data=none turns it off)",
            flush=True,
        )
    try:
        files = data_lib.list_record_files(where)
        eval_dir = where if fileio.isdir(where) else os.path.dirname(files[0])
        meta = read_metadata(eval_dir)
        if meta is not None:
            _check_metadata(
                meta, cfg, vocab_sha256 if meta.get("vocab_sha256") else None
            )
        data_lib.check_records(
            files, cfg.data.max_seq_length, cfg.data.max_predictions_per_seq
        )
    except ValueError as e:  # ConfigError and RecordError included
        raise ConfigError(f"--eval_data {where}: {e}") from None
    return cfg.replace(pretrain=dataclasses.replace(p, eval_data=where))


def masking_data(cfg):
    """The `DataConfig` dynamic masking follows: the records' settings with
    `pretrain.masking_rate` and `pretrain.max_predictions_per_seq` (when
    set) in place of `masked_lm_prob` and `max_predictions_per_seq`."""
    d, p = cfg.data, cfg.pretrain
    return dataclasses.replace(
        d,
        masked_lm_prob=p.masking_rate or d.masked_lm_prob,
        max_predictions_per_seq=p.max_predictions_per_seq or d.max_predictions_per_seq,
    )


def check_masking_rate(cfg):
    """Refuses a dynamic-masking rate whose masks cannot fit the slots.

    A full sequence of `max_seq_length` tokens ([CLS] and [SEP] counted,
    as the masking rule's budget counts them) gets `round(max_seq_length *
    rate)` predictions; more than the slots per sequence
    (the records' `max_predictions_per_seq`, or the trainer's own
    `pretrain.max_predictions_per_seq`) would be cut silently to that
    number, so the rate asked for is not the rate trained.
    """
    d, p = masking_data(cfg), cfg.pretrain
    rate = "pretrain.masking_rate" if p.masking_rate else "data.masked_lm_prob"
    if p.max_predictions_per_seq:
        slots = f"pretrain.max_predictions_per_seq is {d.max_predictions_per_seq}"
        fix = "raise pretrain.max_predictions_per_seq or lower the rate"
    else:
        slots = f"the records have max_predictions_per_seq={d.max_predictions_per_seq}"
        fix = (
            "lower the rate, set pretrain.max_predictions_per_seq, or write "
            "records with more predictions per sequence"
        )
    if d.max_predictions_per_seq > d.max_seq_length - 3:
        raise ConfigError(
            f"pretrain.max_predictions_per_seq={d.max_predictions_per_seq} "
            f"exceeds the {d.max_seq_length - 3} tokens a sequence of "
            f"{d.max_seq_length} can mask"
        )
    wanted = round(d.max_seq_length * d.masked_lm_prob)
    if wanted > d.max_predictions_per_seq:
        raise ConfigError(
            f"{rate}={d.masked_lm_prob:g} needs {wanted} predictions for a "
            f"full sequence of {d.max_seq_length} but {slots}: {fix}"
        )


def vocabulary_size_from_data(cfg, meta, vocab_path, model_dir):
    """`cfg` with `model.vocabulary_size` taken from what the records say:
    their metadata, else their vocabulary file, else the run's config."""
    size, source = None, ""
    if meta is not None and meta.get("vocab_size"):
        size, source = int(meta["vocab_size"]), features.METADATA_FILE
    elif vocab_path:
        size, source = len(features.read_vocab(vocab_path)), vocab_path
    elif model_dir and fileio.exists(fileio.join(model_dir, "config.yaml")):
        from configs.loader import load_resolved

        size = load_resolved(model_dir).model.vocabulary_size
        source = fileio.join(model_dir, "config.yaml")
    if size is None:
        size, source = ModelConfig().vocabulary_size, "the default"
    if size != ModelConfig().vocabulary_size:
        print(f"model.vocabulary_size {size} (from {source})", flush=True)
    return cfg.replace(
        model=dataclasses.replace(cfg.model, vocabulary_size=size)
    ).validate()


def check_resumable(cfg, model_dir, overwrite):
    """Checks `model_dir`'s history before anything is built.

    With `overwrite` the earlier run's files go (checkpoints, metrics,
    logs, weights). Without it, a run with checkpoints resumes, so its
    `config.yaml` must describe the same model: a setting that differs
    (a model size, the vocabulary) is one line naming it, not a shape
    traceback from the restore.
    """
    from configs.loader import RESOLVED_CONFIG_FILE, load_resolved
    from model.bert_backbone import ENCODER_WEIGHTS_FILE
    from model.pretrain_eval import SUMMARY_FILE

    if not fileio.isdir(model_dir):
        return
    if overwrite:
        names = (
            training.CHECKPOINT_SUBDIR,
            training.METRICS_FILE,
            training.PLOT_FILE,
            training.TENSORBOARD_SUBDIR,
            ENCODER_WEIGHTS_FILE,
            RESOLVED_CONFIG_FILE,
            SUMMARY_FILE,
        )
        removed = [n for n in names if fileio.exists(fileio.join(model_dir, n))]
        for name in removed:
            fileio.remove(fileio.join(model_dir, name))
        if removed:
            print(f"--overwrite: removed the earlier run in {model_dir}", flush=True)
        return
    checkpoints = fileio.join(model_dir, training.CHECKPOINT_SUBDIR)
    config_path = fileio.join(model_dir, RESOLVED_CONFIG_FILE)
    if not (fileio.isdir(checkpoints) and fileio.listdir(checkpoints)):
        # A finished run whose checkpoints are gone: starting again would
        # replace its weights and metrics. (A run that died before its
        # first checkpoint has nothing to resume: it starts again.)
        if fileio.exists(fileio.join(model_dir, ENCODER_WEIGHTS_FILE)):
            raise ConfigError(
                f"--model_dir {model_dir} holds a finished run "
                f"({ENCODER_WEIGHTS_FILE}) but no checkpoints to resume: "
                "pass --overwrite to train it again, or give another --model_dir"
            )
        return
    if not fileio.exists(config_path):
        return
    recorded = load_resolved(model_dir).model
    for field in dataclasses.fields(recorded):
        here, there = getattr(cfg.model, field.name), getattr(recorded, field.name)
        if here != there:
            raise ConfigError(
                f"model.{field.name} is {here} here but {there} in "
                f"{config_path}, which this run's checkpoints were trained "
                f"with: drop the setting (or --set model.{field.name}={there}) "
                "to resume, or pass another --model_dir or --overwrite"
            )


def find_vocab(cfg, data_dir, meta):
    candidates = [cfg.data.vocab_file, os.path.join(data_dir, "vocab.txt")]
    if meta:
        candidates += [meta.get("vocab_file", ""), meta.get("vocab", "")]
    for path in candidates:
        if path and isinstance(path, str) and fileio.exists(path):
            return path
    if cfg.data.vocab_file:
        raise ConfigError(f"data.vocab_file {cfg.data.vocab_file} not found")
    return None


def copy_vocab(cfg, model_dir):
    """Copies the records' vocabulary to `model_dir/vocab.txt` (if known).

    A pretraining run then carries everything fine-tuning and export need:
    weights, config and the exact vocabulary its embedding rows index.
    """
    source = cfg.data.vocab_file
    if not source or not fileio.exists(source):
        return
    if len(features.read_vocab(source)) != cfg.model.vocabulary_size:
        print(
            f"note: {source} does not match model.vocabulary_size "
            f"{cfg.model.vocabulary_size}; not copied to {model_dir}",
            flush=True,
        )
        return
    target = fileio.join(model_dir, "vocab.txt")
    if not fileio.same_path(source, target):
        fileio.copy(source, target, overwrite=True)


def check_model_dir(model_dir):
    if fileio.isfile(model_dir):
        raise ConfigError(f"--model_dir {model_dir} is a file, not a directory")


def _check_metadata(meta, cfg, vocab_sha256):
    """`check_compatible` of pretraining records' metadata against the
    model and data settings of `cfg` (`--data` and `--eval_data` alike);
    `vocab_sha256` None skips the vocabulary comparison."""
    check_compatible(
        meta,
        kind="pretraining",
        max_seq_length=cfg.data.max_seq_length,
        max_predictions_per_seq=cfg.data.max_predictions_per_seq,
        vocabulary_size=cfg.model.vocabulary_size,
        vocab_sha256=vocab_sha256,
        max_sequence_length=cfg.model.max_sequence_length,
    )
