"""`python -m model.pretrain`: BERT pretraining (MLM + NSP/SOP) on records.

    python -m model.pretrain --config=pretrain/bert_tiny.yaml \
        --data=DIR --model_dir=DIR [--steps=N --batch_size=N ...] \
        [--set section.key=value ...]

Top to bottom (nanoGPT's shape): resolve the config (defaults -> YAML ->
flags -> `--set`); check the records' `metadata.json` against it and stop
with one line on a mismatch, before building anything; pick the strategy,
precision and XLA; build the model and optimizer in `strategy.scope()`;
resume from the latest checkpoint in `model_dir`; run a `tf.function` train
step under `strategy.run` (works under every strategy, unlike `fit` with
MultiWorkerMirroredStrategy, keras-team/keras#20585); log, checkpoint, and
at the end write `encoder.weights.h5` for `model.finetune` and a PNG plot.

Outputs in `model_dir`: `config.yaml` (resolved), `checkpoints/`,
`metrics.jsonl`, `logs/train` (TensorBoard), `metrics.png`,
`encoder.weights.h5`.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

from configs import features
from configs.loader import dump_config, load_config
from configs.metadata import check_compatible, read_metadata
from configs.schema import ConfigError, PretrainConfig

# Flags that are shorthands for `--set pretrain.<name>=<value>`.
PRETRAIN_FLAGS = (
    "steps",
    "batch_size",
    "learning_rate",
    "warmup_steps",
    "save_every",
    "log_every",
    "steps_per_loop",
    "strategy",
    "tpu",
    "precision",
    "jit_compile",
    "masking",
    "seed",
    "optimizer",
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m model.pretrain", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="YAML config (repeatable or comma-separated), e.g. "
        "pretrain/bert_tiny.yaml",
    )
    parser.add_argument("--data", required=True, help="records dir or globs")
    parser.add_argument("--model_dir", required=True, help="output directory")
    parser.add_argument(
        "--init_checkpoint",
        default="",
        help="start from our pretraining model_dir or a Google TF1 BERT "
        "checkpoint prefix (ignored when model_dir already has checkpoints)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
    )
    for name in PRETRAIN_FLAGS:
        parser.add_argument(f"--{name}", default=None)
    return parser.parse_args(argv)


def resolve_config(args):
    """The validated ExperimentConfig: YAML files, then flags, then --set."""
    paths = [p for item in args.config for p in item.split(",") if p]
    defaults = PretrainConfig()
    overrides = []
    for name in PRETRAIN_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        if isinstance(getattr(defaults, name), str):
            value = json.dumps(value)  # YAML would read "false" as a bool
        overrides.append(f"pretrain.{name}={value}")
    return load_config(paths, overrides + list(args.overrides))


def check_data(cfg, data):
    """Checks records against the config; returns (cfg, files, meta, vocab).

    Raises ConfigError / ValueError with one line on any mismatch. Records
    without metadata.json are accepted with a notice; their lengths are
    then read from the first record and put into the config.
    """
    from model import data as data_lib

    files = data_lib.list_record_files(data)
    data_dir = data if _isdir(data) else os.path.dirname(files[0])
    meta = read_metadata(data_dir)
    vocab_path = _find_vocab(cfg, data_dir, meta)
    vocab_sha = features.vocab_sha256(vocab_path) if cfg.data.vocab_file else None
    if meta is not None:
        check_compatible(
            meta,
            kind="pretraining",
            max_seq_length=cfg.data.max_seq_length,
            max_predictions_per_seq=cfg.data.max_predictions_per_seq,
            vocabulary_size=cfg.model.vocabulary_size,
            vocab_sha256=vocab_sha,
            max_sequence_length=cfg.model.max_sequence_length,
        )
    else:
        seq, pred = data_lib.read_record_lengths(files[0])
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
    if vocab_path:
        # Recorded so that `train` can copy it into model_dir, where
        # `model.finetune --init_checkpoint=model_dir` finds it.
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, vocab_file=vocab_path))
    return cfg, files, meta, vocab


def _isdir(path):
    import tensorflow as tf

    return tf.io.gfile.isdir(path)


def _find_vocab(cfg, data_dir, meta):
    import tensorflow as tf

    candidates = [cfg.data.vocab_file, os.path.join(data_dir, "vocab.txt")]
    if meta:
        candidates += [meta.get("vocab_file", ""), meta.get("vocab", "")]
    for path in candidates:
        if path and isinstance(path, str) and tf.io.gfile.exists(path):
            return path
    if cfg.data.vocab_file:
        raise ConfigError(f"data.vocab_file {cfg.data.vocab_file} not found")
    return None


def _copy_vocab(cfg, model_dir):
    """Copies the records' vocabulary to `model_dir/vocab.txt` (if known).

    A pretraining run then carries everything fine-tuning and export need:
    weights, config and the exact vocabulary its embedding rows index.
    """
    import tensorflow as tf

    source = cfg.data.vocab_file
    if not source or not tf.io.gfile.exists(source):
        return
    if len(features.read_vocab(source)) != cfg.model.vocabulary_size:
        print(
            f"note: {source} does not match model.vocabulary_size "
            f"{cfg.model.vocabulary_size}; not copied to {model_dir}",
            flush=True,
        )
        return
    target = os.path.join(model_dir, "vocab.txt")
    if os.path.abspath(source) != os.path.abspath(target):
        tf.io.gfile.copy(source, target, overwrite=True)


def run(argv=None):
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        cfg, files, meta, vocab = check_data(cfg, args.data)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    return train(cfg, files, args.model_dir, vocab, args.init_checkpoint)


def train(cfg, files, model_dir, vocab=None, init_checkpoint=""):
    """Pretrains per `cfg` on record `files`; returns the last metrics dict."""
    import keras
    import tensorflow as tf

    from model import data as data_lib
    from model import training
    from model.bert_backbone import ENCODER_WEIGHTS_FILE, BertBackbone
    from model.bert_pretrainer import (
        BertPretrainer,
        combine_loss_terms,
        pretraining_loss_terms,
    )
    from model.masking import DynamicMasker
    from model.optimization import create_optimizer
    from model.strategy import create_strategy, device_kind, is_chief

    p = cfg.pretrain

    # === Strategy, precision, XLA ===
    strategy = create_strategy(p.strategy, p.tpu)
    replicas = strategy.num_replicas_in_sync
    chief = is_chief(strategy)
    precision, jit = training.choose_fast_path(
        p.precision, p.jit_compile, cfg.model.hidden_dim, device_kind(), replicas
    )
    cfg = cfg.replace(
        pretrain=dataclasses.replace(
            p, precision=precision, jit_compile=str(jit).lower()
        )
    )
    if p.batch_size % replicas:
        raise SystemExit(
            f"error: batch_size {p.batch_size} is not divisible by "
            f"{replicas} replicas"
        )
    if chief:
        dump_config(cfg, model_dir)
        _copy_vocab(cfg, model_dir)
    keras.utils.set_random_seed(p.seed)

    # === Model, optimizer, checkpoint (in the strategy's scope) ===
    with strategy.scope():
        backbone = BertBackbone.from_model_config(cfg.model, dtype=precision)
        pretrainer = BertPretrainer(backbone)
        optimizer = create_optimizer(
            learning_rate=p.learning_rate,
            total_steps=p.steps,
            warmup_steps=p.warmup_steps,
            weight_decay=p.weight_decay,
            optimizer=p.optimizer,
            beta_1=p.beta_1,
            beta_2=p.beta_2,
            epsilon=p.epsilon,
        )
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(pretrainer.trainable_variables)
        state = training.CheckpointState(
            model_dir,
            model=pretrainer,
            optimizer=optimizer,
            keep=p.keep_checkpoints,
            is_chief=chief,
        )
    start_step, latest = state.restore()
    if latest:
        print(f"resuming from {latest} at step {start_step}", flush=True)
    elif init_checkpoint:
        _load_init_checkpoint(init_checkpoint, backbone, pretrainer)
        print(f"initialized from {init_checkpoint}", flush=True)
    if start_step >= p.steps:
        print(f"already at step {start_step} >= steps {p.steps}", flush=True)

    # === Input pipeline (one per worker/host) ===
    masker = None
    if p.masking == "dynamic":
        masker = DynamicMasker(
            vocab,
            max_predictions_per_seq=cfg.data.max_predictions_per_seq,
            masked_lm_prob=cfg.data.masked_lm_prob,
            mask_token_prob=cfg.data.mask_token_prob,
            random_token_prob=cfg.data.random_token_prob,
            random_tokens=cfg.data.random_tokens,
            whole_word_mask=cfg.data.whole_word_mask,
        )

    def dataset_fn(context):
        return data_lib.pretraining_dataset(
            files,
            batch_size=context.get_per_replica_batch_size(p.batch_size),
            max_seq_length=cfg.data.max_seq_length,
            max_predictions_per_seq=cfg.data.max_predictions_per_seq,
            input_context=context,
            shuffle_buffer=p.shuffle_buffer,
            # A resumed run continues with a fresh order, not a replay.
            seed=p.seed + start_step,
            masker=masker,
        )

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dataset)

    # === Train step: strategy.run + global-batch loss ===
    input_keys = (
        features.INPUT_IDS,
        features.INPUT_MASK,
        features.SEGMENT_IDS,
        features.MASKED_LM_POSITIONS,
    )
    variables = pretrainer.trainable_variables

    def replica_step(batch):
        with tf.GradientTape() as tape:
            outputs = pretrainer({k: batch[k] for k in input_keys}, training=True)
            terms = pretraining_loss_terms(batch, outputs)
            sums = {k: tf.reduce_sum(v) for k, v in terms.items()}
            total_weight = sums["mlm_weight"]
            if replicas > 1:
                total_weight = tf.distribute.get_replica_context().all_reduce(
                    tf.distribute.ReduceOp.SUM, total_weight
                )
            # This replica's share: shares sum to the global-batch loss.
            losses = combine_loss_terms(sums, total_weight, p.batch_size)
        training.apply_gradients(
            optimizer, losses["loss"], tape, variables, p.clipnorm, replicas
        )
        return losses

    if jit:
        replica_step = tf.function(replica_step, jit_compile=True)

    metric_keys = ("loss", "mlm_loss", "sentence_loss", "mlm_accuracy")
    metric_keys += ("sentence_accuracy",)

    @tf.function
    def train_loop(iterator, num_steps):
        # `num_steps` steps in one call (steps_per_loop); the replica step
        # is traced once. Returns the last step's global metrics.
        values = {k: tf.constant(0.0) for k in metric_keys}
        for _ in tf.range(num_steps):
            shares = strategy.run(replica_step, args=(next(iterator),))
            values = {
                k: strategy.reduce(tf.distribute.ReduceOp.SUM, shares[k], axis=None)
                for k in metric_keys
            }
        return values

    # === Loop: log, checkpoint, progress ===
    logger = training.MetricsLogger(model_dir, is_chief=chief, resume_step=start_step)
    progress = training.ProgressPrinter(p.steps, start_step, enabled=chief)
    inner = (
        optimizer.inner_optimizer
        if hasattr(optimizer, "inner_optimizer")
        else optimizer
    )
    step, last_saved, values = start_step, start_step, {}
    window_start, window_steps = time.time(), 0
    first_call_seconds = None
    while step < p.steps:
        num = min(
            p.steps_per_loop,
            p.steps - step,
            p.log_every - step % p.log_every,
            p.save_every - step % p.save_every,
        )
        out = train_loop(iterator, tf.constant(num, tf.int32))
        step += num
        window_steps += num
        if first_call_seconds is None:
            # The first call traces (and compiles) the step: time it apart
            # so that `examples_per_second` measures training only. One
            # host sync, here only; later calls run ahead until a log step.
            out["loss"].numpy()
            first_call_seconds = time.time() - window_start
            window_start, window_steps = time.time(), 0
        if step % p.log_every == 0 or step == p.steps:
            values = {k: float(v) for k, v in out.items()}
            elapsed = time.time() - window_start
            values["learning_rate"] = float(
                inner.learning_rate(inner.iterations - 1)
                if callable(inner.learning_rate)
                else inner.learning_rate
            )
            if window_steps:
                values["examples_per_second"] = window_steps * p.batch_size / elapsed
            else:
                # A window made of the first call alone: no training-only
                # throughput to report; the tracing time is in the record.
                values["first_call_seconds"] = first_call_seconds
            logger.log(step, values)
            progress.update(step, values)
            window_start, window_steps = time.time(), 0
        if step % p.save_every == 0 or step == p.steps:
            state.save(step)
            last_saved = step
    if last_saved != step:
        state.save(step)

    # === Final outputs for model.finetune ===
    if chief:
        _save_weights(backbone, os.path.join(model_dir, ENCODER_WEIGHTS_FILE))
        metrics_path = os.path.join(model_dir, training.METRICS_FILE)
        if tf.io.gfile.exists(metrics_path):
            training.plot_metrics(
                metrics_path, os.path.join(model_dir, training.PLOT_FILE)
            )
    return values


def _load_init_checkpoint(path, backbone, pretrainer):
    from model import checkpoint_conversion
    from model.bert_backbone import ENCODER_WEIGHTS_FILE

    if checkpoint_conversion.is_google_checkpoint(path):
        checkpoint_conversion.load_google_checkpoint(backbone, path, pretrainer)
        return
    weights = os.path.join(path, ENCODER_WEIGHTS_FILE)
    if not os.path.exists(weights):
        raise SystemExit(
            f"error: --init_checkpoint {path} is neither a model_dir with "
            f"{ENCODER_WEIGHTS_FILE} nor a Google BERT checkpoint"
        )
    backbone.load_weights(weights)


def _save_weights(model, path):
    """`save_weights` writes local h5 files; copy through gfile for gs://."""
    if "://" not in path:
        model.save_weights(path)
        return
    import tensorflow as tf

    local = os.path.join(tempfile.mkdtemp(), os.path.basename(path))
    model.save_weights(local)
    tf.io.gfile.copy(local, path, overwrite=True)


def main():
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
