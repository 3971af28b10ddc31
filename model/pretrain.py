"""`python -m model.pretrain`: BERT pretraining (MLM + NSP/SOP) on records.

    python -m model.pretrain --config=pretrain/bert_tiny.yaml \
        --data=DIR --model_dir=DIR [--steps=N --batch_size=N ...] \
        [--set section.key=value ...]

Either Keras backend, one entry point (`KERAS_BACKEND=jax python -m
model.pretrain ...` for JAX; TensorFlow otherwise). Top to bottom
(nanoGPT's shape): resolve the config (defaults -> YAML -> flags ->
`--set`) and record the backend; check the records' `metadata.json`
against it and stop with one line on a mismatch, before building
anything; build the backend's step (TensorFlow: the `tf.distribute`
strategy, precision and XLA, model and optimizer in `strategy.scope()`, a
`tf.function` step under `strategy.run`, which works under every strategy,
unlike `fit` with MultiWorkerMirroredStrategy, keras-team/keras#20585;
JAX: `keras.distribution`, a jitted `stateless_call` step with masks drawn
on the device, and no TensorFlow imported); resume from the latest
checkpoint in `model_dir`; run one loop that logs, checkpoints and keeps
the wall-clock budget; at the end write `encoder.weights.h5` for
`model.finetune` and a PNG plot.

Outputs in `model_dir` (both backends): `config.yaml` (resolved, with the
backend), `checkpoints/`, `metrics.jsonl`, `metrics.png`, `logs/train`
(TensorBoard), `encoder.weights.h5`, `vocab.txt`.
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

from configs import features, fileio, output_lock
from configs.loader import dump_config, load_config
from configs.metadata import check_compatible, read_metadata
from configs.cli import flag_help, program_name, quiet_tensorflow_logs
from configs.schema import ConfigError, ModelConfig, PretrainConfig
from model import training

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
    "budget_minutes",
)

# `--strategy` on each backend (the JAX column is model.jax_training's).
STRATEGY_HELP = (
    "TensorFlow: default = no distribution, one_device = first GPU else "
    "CPU, mirrored = MirroredStrategy over local GPUs (logical CPUs "
    "without), multi_worker = MultiWorkerMirroredStrategy from TF_CONFIG, "
    "tpu = TPUStrategy. JAX (KERAS_BACKEND=jax): default/one_device = one "
    "device, mirrored = keras.distribution.DataParallel over all local "
    "devices, multi_worker = keras.distribution.initialize() from the "
    "KERAS_DISTRIBUTION_* environment then DataParallel over all devices, "
    "tpu = DataParallel over the TPU devices."
)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=program_name("model.pretrain"),
        description=__doc__.split("\n")[0],
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="YAML config (repeatable or comma-separated), e.g. "
        "configs/pretrain/bert_tiny.yaml; applied over the schema defaults",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="records directory (pipelines.pretraining_data --output_dir) or "
        "comma-separated globs of TFRecord files",
    )
    parser.add_argument(
        "--model_dir",
        required=True,
        help="output directory: checkpoints, metrics.jsonl, logs/, config.yaml, "
        "encoder.weights.h5; a rerun resumes from its newest checkpoint",
    )
    parser.add_argument(
        "--init_checkpoint",
        default="",
        help="start from a checkpoint: our pretraining (or fine-tuning) "
        "model_dir, a Hugging Face BERT directory (config.json + "
        "model.safetensors; encoder, MLM and NSP heads) or a Google TF1 BERT "
        "checkpoint prefix; its sizes and vocabulary replace the config's "
        "(ignored when model_dir already has checkpoints)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: delete the earlier run's checkpoints, metrics and "
        "weights in --model_dir (without it a run resumes, or is refused "
        "when its history cannot be resumed)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config field, e.g. --set model.num_layers=4 "
        "(applied last; repeatable)",
    )
    for name in PRETRAIN_FLAGS:
        text = flag_help(PretrainConfig, name)
        if name == "strategy":
            text = f"{STRATEGY_HELP} {text}"
        parser.add_argument(f"--{name}", default=None, help=text)
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


# A value no one sets: `vocabulary_size_is_set` resolves the config on a
# base holding it to see whether a YAML file or `--set` changed it.
_UNSET_VOCABULARY_SIZE = 2**31 - 1


def vocabulary_size_is_set(args):
    """True when a `--config` file or `--set` gives `model.vocabulary_size`.

    Otherwise the size comes from the records' metadata (or their vocab
    file, or the run's checkpoint), so records made with one's own
    vocabulary train without knowing the setting.
    """
    from configs.schema import ExperimentConfig

    base = ExperimentConfig()
    base = base.replace(
        model=dataclasses.replace(base.model, vocabulary_size=_UNSET_VOCABULARY_SIZE)
    )
    paths = [p for item in args.config for p in item.split(",") if p]
    probe = load_config(paths, list(args.overrides), base=base)
    return probe.model.vocabulary_size != _UNSET_VOCABULARY_SIZE


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
    data_dir = data if _isdir(data) else os.path.dirname(files[0])
    meta = read_metadata(data_dir)
    if meta is None:
        ours = [f for f in files if data_lib.is_data_job_shard(f)]
        if ours:
            raise ConfigError(
                f"{data_dir} holds data-job shards ({os.path.basename(ours[0])}"
                f", ...) but no {features.METADATA_FILE}: the job that wrote "
                "them did not finish; rerun it (with --overwrite)"
            )
    vocab_path = _find_vocab(cfg, data_dir, meta)
    vocab_sha = features.vocab_sha256(vocab_path) if cfg.data.vocab_file else None
    if not vocabulary_size_set:
        cfg = _vocabulary_size_from_data(cfg, meta, vocab_path, model_dir)
    if meta is not None:
        try:
            check_compatible(
                meta,
                kind="pretraining",
                max_seq_length=cfg.data.max_seq_length,
                max_predictions_per_seq=cfg.data.max_predictions_per_seq,
                vocabulary_size=cfg.model.vocabulary_size,
                vocab_sha256=vocab_sha,
                max_sequence_length=cfg.model.max_sequence_length,
            )
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
        _check_masking_rate(cfg.data)
    if vocab_path:
        # Recorded so that `train` can copy it into model_dir, where
        # `model.finetune --init_checkpoint=model_dir` finds it.
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, vocab_file=vocab_path))
    return cfg, files, meta, vocab


def _check_masking_rate(d):
    """Refuses a dynamic-masking rate whose masks cannot fit the slots.

    A full sequence of `max_seq_length` tokens (less [CLS] and two [SEP])
    gets `round(real * masked_lm_prob)` predictions; more than the records'
    `max_predictions_per_seq` slots would be cut silently to that number,
    so the rate asked for is not the rate trained.
    """
    real = d.max_seq_length - 3
    wanted = round(real * d.masked_lm_prob)
    if wanted > d.max_predictions_per_seq:
        raise ConfigError(
            f"data.masked_lm_prob={d.masked_lm_prob:g} needs {wanted} predictions "
            f"for a full sequence of {d.max_seq_length} but the records have "
            f"max_predictions_per_seq={d.max_predictions_per_seq}: lower the "
            "rate or write records with more predictions per sequence"
        )


def _vocabulary_size_from_data(cfg, meta, vocab_path, model_dir):
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


def _isdir(path):
    return fileio.isdir(path)


def _find_vocab(cfg, data_dir, meta):
    candidates = [cfg.data.vocab_file, os.path.join(data_dir, "vocab.txt")]
    if meta:
        candidates += [meta.get("vocab_file", ""), meta.get("vocab", "")]
    for path in candidates:
        if path and isinstance(path, str) and fileio.exists(path):
            return path
    if cfg.data.vocab_file:
        raise ConfigError(f"data.vocab_file {cfg.data.vocab_file} not found")
    return None


def _copy_vocab(cfg, model_dir):
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


def run(argv=None):
    """Pretrains; every fault a user can act on is one `error:` line.

    Exit codes: 2 (via SystemExit with a message: 1) for config and data
    problems before training; 1 for divergence and a full disk; 130/143
    for SIGINT/SIGTERM (a checkpoint at the current step is written first,
    so a rerun resumes there). The output location is locked while it
    runs.
    """
    with output_lock.released_at_end():
        return _run(argv)


def _run(argv=None):
    args = parse_args(argv)
    with training.StopSignals() as signals:
        try:
            try:
                _check_model_dir(args.model_dir)
                output_lock.acquire(args.model_dir, "model.pretrain")  # before work
                cfg = resolve_config(args)
                cfg = resolve_backend(cfg)
                cfg = _config_from_init_checkpoint(cfg, args.init_checkpoint)
                cfg, files, meta, vocab = check_data(
                    cfg,
                    args.data,
                    # An --init_checkpoint's size replaced the config's above.
                    vocabulary_size_set=bool(args.init_checkpoint)
                    or vocabulary_size_is_set(args),
                    model_dir=args.model_dir,
                )
                check_resumable(cfg, args.model_dir, args.overwrite)
            except (ConfigError, ValueError, training.CheckpointError) as e:
                raise SystemExit(f"error: {e}") from None
            except OSError as e:
                if fileio.is_disk_full(e):
                    raise
                raise SystemExit(f"error: {e}") from None
            return train(
                cfg, files, args.model_dir, vocab, args.init_checkpoint, signals
            )
        except (training.Diverged, training.CheckpointError) as e:
            raise SystemExit(f"error: {e}") from None
        except training.Interrupted as e:
            print(f"error: interrupted ({e.name}) {e.where}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except Exception as e:
            if fileio.is_disk_full(e):
                raise SystemExit(f"error: {fileio.disk_full_line(e)}") from None
            raise


def resolve_backend(cfg):
    """Records the Keras backend this process runs in `pretrain.backend`.

    The backend is fixed when Keras is imported (`KERAS_BACKEND`), so a
    config that asks for another one stops here with the variable to set.
    """
    import keras

    running = keras.backend.backend()
    if running not in ("tensorflow", "jax"):
        raise ConfigError(
            f"Keras runs on {running!r}: set KERAS_BACKEND=tensorflow or jax"
        )
    wanted = cfg.pretrain.backend
    if wanted not in ("auto", running):
        raise ConfigError(
            f"pretrain.backend is {wanted} but Keras runs on {running}: "
            f"set KERAS_BACKEND={wanted}"
        )
    if running == "jax" and cfg.pretrain.precision == "mixed_float16":
        raise ConfigError(
            "precision mixed_float16 (loss scaling) is TensorFlow-only here; "
            "use mixed_bfloat16 under JAX"
        )
    return cfg.replace(pretrain=dataclasses.replace(cfg.pretrain, backend=running))


def _check_model_dir(model_dir):
    if fileio.isfile(model_dir):
        raise ConfigError(f"--model_dir {model_dir} is a file, not a directory")


def train(cfg, files, model_dir, vocab=None, init_checkpoint="", signals=None):
    """Pretrains per `cfg` on record `files`; returns the last metrics dict.

    One loop for both backends: the backend only supplies the compiled
    step (`_TensorFlowSteps` / `_JaxSteps`: build, restore, run `k` steps,
    save, finish); logging, checkpoint cadence, the wall-clock budget and
    the final outputs are the same code.
    """
    from model.bert_backbone import ENCODER_WEIGHTS_FILE

    started = time.time()
    cfg = resolve_backend(cfg)
    p = cfg.pretrain
    signals = signals or training.StopSignals()
    if fileio.isdir(model_dir):
        for path in training.clear_leftovers(model_dir):
            print(f"removed {path} (left by a killed or failed run)", flush=True)
    steps_cls = _JaxSteps if p.backend == "jax" else _TensorFlowSteps
    runner = steps_cls(cfg, files, model_dir, vocab)
    cfg = runner.cfg  # with precision / XLA resolved
    p = cfg.pretrain
    start_step, latest = runner.restore()
    if latest:
        print(f"resuming from {latest} at step {start_step}", flush=True)
    elif init_checkpoint:
        _load_init_checkpoint(init_checkpoint, runner.backbone, runner.pretrainer)
        runner.reload_state()
        print(f"initialized from {init_checkpoint}", flush=True)
    total_steps, warmup_steps = p.steps, _warmup_steps(p, p.steps)
    if warmup_steps > total_steps and not p.budget_minutes > 0:
        print(
            f"note: warmup_steps {warmup_steps} exceeds steps {total_steps}: "
            f"warm-up capped at {total_steps} steps (the learning rate peaks "
            "at the last step; lower --warmup_steps to leave room for decay)",
            flush=True,
        )
        warmup_steps = total_steps
    budgeted = p.budget_minutes > 0
    if budgeted and start_step > 0:
        # A resumed budget run keeps the schedule its first part fixed.
        total_steps, warmup_steps = _recorded_schedule(model_dir, p)
        budgeted = False
    runner.reschedule(total_steps, warmup_steps)
    if runner.chief:
        dump_config(_with_schedule(cfg, total_steps, warmup_steps), model_dir)
        _copy_vocab(cfg, model_dir)
    if start_step >= total_steps:
        print(f"already at step {start_step} >= steps {total_steps}", flush=True)
    runner.start_input(start_step)

    # === Loop: log, checkpoint, progress ===
    logger = training.MetricsLogger(
        model_dir,
        is_chief=runner.chief,
        resume_step=start_step,
        tensorboard=p.backend == "tensorflow",
    )
    progress = training.ProgressPrinter(total_steps, start_step, enabled=runner.chief)
    step, last_saved, values = start_step, start_step, {}
    window_start, window_steps = time.time(), 0
    first_call_seconds = None
    probe = None  # (start time, start step) of the budget probe
    last_finite = None  # (step, loss) of the last finite loss seen
    # Signals stop the loop between compiled calls: the state is whole
    # there, so the current step is saved (when finite) before exiting.
    with signals.deferred():
        while step < total_steps and signals.received is None:
            num = min(
                p.steps_per_loop,
                total_steps - step,
                p.log_every - step % p.log_every,
                p.save_every - step % p.save_every,
            )
            out = runner.run(step, num)
            step += num
            window_steps += num
            if first_call_seconds is None:
                # The first call traces (and compiles) the step: time it
                # apart so that `examples_per_second` measures training
                # only. One host sync, here only; later calls run ahead
                # until a log or save step.
                runner.wait(out)
                first_call_seconds = time.time() - window_start
                window_start, window_steps = time.time(), 0
                probe = (time.time(), step)
            if budgeted and _probe_done(probe, p, runner, out):
                total_steps, warmup_steps = _fit_budget(
                    p, started, probe, step, first_call_seconds
                )
                runner.reschedule(total_steps, warmup_steps)
                progress.total_steps = total_steps
                if runner.chief:
                    dump_config(
                        _with_schedule(cfg, total_steps, warmup_steps), model_dir
                    )
                budgeted = False
            log_now = step % p.log_every == 0 or step >= total_steps
            save_now = step % p.save_every == 0 or step >= total_steps
            if log_now or save_now or signals.received is not None:
                # Before anything is logged or saved: a NaN state is never
                # written (checkpoint, metrics or weights).
                loss = float(runner.metrics(out)["loss"])
                training.check_finite(
                    loss, step, last_finite, runner.learning_rate(step - 1)
                )
                last_finite = (step, loss)
            if log_now:
                values = {k: float(v) for k, v in runner.metrics(out).items()}
                elapsed = time.time() - window_start
                values["learning_rate"] = runner.learning_rate(step - 1)
                if window_steps:
                    values["examples_per_second"] = (
                        window_steps * p.batch_size / elapsed
                    )
                else:
                    # A window made of the first call alone: no training-only
                    # throughput to report; the tracing time is in the record.
                    values["first_call_seconds"] = first_call_seconds
                logger.log(step, values)
                progress.update(step, values)
                window_start, window_steps = time.time(), 0
            if save_now:
                runner.save(step)
                last_saved = step
        if last_saved != step:  # a signal stopped the loop between saves
            loss = float(runner.metrics(out)["loss"])
            training.check_finite(
                loss, step, last_finite, runner.learning_rate(step - 1)
            )
            runner.save(step)
    if signals.received is not None:
        interrupted = training.Interrupted(signals.received)
        interrupted.where = (
            f"at step {step}: checkpoint saved in {model_dir}; rerun the same "
            "command to resume"
        )
        raise interrupted

    # === Final outputs for model.finetune ===
    if runner.chief:
        runner.finish()
        training.save_weights_atomic(
            runner.backbone, fileio.join(model_dir, ENCODER_WEIGHTS_FILE)
        )
        metrics_path = fileio.join(model_dir, training.METRICS_FILE)
        try:
            if fileio.exists(metrics_path):
                training.plot_metrics(
                    metrics_path, fileio.join(model_dir, training.PLOT_FILE)
                )
        except ImportError:  # a lean accelerator image without matplotlib
            print(f"note: matplotlib is not installed: no {training.PLOT_FILE}")
    return values


# === Wall-clock budget (`pretrain.budget_minutes`) ===
# As budget-pretraining recipes do: time real steps, then fix the step
# count that fits and size warm-up and decay to it. The step is compiled
# again once with the final schedule; that compile is paid from the budget
# (reserved as the first call's time).
_PROBE_MIN_SECONDS = 5.0


def _warmup_steps(p, total_steps):
    if p.warmup_fraction > 0:
        return max(1, int(round(p.warmup_fraction * total_steps)))
    return p.warmup_steps


def _probe_done(probe, p, runner, out):
    if probe is None:
        return False
    budget = p.budget_minutes * 60
    if time.time() - probe[0] < max(_PROBE_MIN_SECONDS, 0.02 * budget):
        return False
    runner.wait(out)  # measure finished steps, not queued ones
    return True


def _fit_budget(p, started, probe, step, compile_seconds):
    """(total_steps, warmup_steps) that end within the budget."""
    seconds_per_step = (time.time() - probe[0]) / max(step - probe[1], 1)
    # Reserve: one more compile, the final save, and 3% slack.
    left = p.budget_minutes * 60 - (time.time() - started)
    left = left * 0.97 - compile_seconds - 10.0
    # `steps` stays an upper bound.
    total = min(step + max(int(left / seconds_per_step), 0), p.steps)
    warmup = _warmup_steps(p, total)
    if p.warmup_fraction == 0:
        warmup = min(warmup, max(total // 10, 1))
    print(
        f"budget {p.budget_minutes:g} min: {1 / seconds_per_step:.2f} steps/s "
        f"measured -> {total} steps, warm-up {warmup}",
        flush=True,
    )
    return total, warmup


def _with_schedule(cfg, total_steps, warmup_steps):
    return cfg.replace(
        pretrain=dataclasses.replace(
            cfg.pretrain, steps=total_steps, warmup_steps=warmup_steps
        )
    )


def _recorded_schedule(model_dir, p):
    from configs.loader import load_resolved

    try:
        recorded = load_resolved(model_dir).pretrain
    except ConfigError:
        return p.steps, _warmup_steps(p, p.steps)
    return recorded.steps, recorded.warmup_steps


# === Backends: the compiled step and its state ===
class _TensorFlowSteps:
    """`tf.distribute` strategy, `strategy.run` step in a `tf.function`,
    `tf.train.CheckpointManager` checkpoints, tf.data input."""

    def __init__(self, cfg, files, model_dir, vocab):
        import keras

        from model.strategy import create_strategy, device_kind, is_chief

        p = cfg.pretrain
        self.files, self.model_dir, self.vocab = files, model_dir, vocab
        self.strategy = create_strategy(p.strategy, p.tpu)
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = is_chief(self.strategy)
        precision, self.jit = training.choose_fast_path(
            p.precision,
            p.jit_compile,
            cfg.model.hidden_dim,
            device_kind(),
            self.replicas,
        )
        self.cfg = cfg = cfg.replace(
            pretrain=dataclasses.replace(
                p, precision=precision, jit_compile=str(self.jit).lower()
            )
        )
        _check_divisible(p.batch_size, self.replicas, "replicas")
        keras.utils.set_random_seed(p.seed)
        with self.strategy.scope():
            # Clipping happens in `training.apply_gradients`, after the sum.
            self.backbone, self.pretrainer, self.optimizer = _build(cfg, precision)
            if precision == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            self.optimizer.build(self.pretrainer.trainable_variables)
            self.state = training.CheckpointState(
                model_dir,
                model=self.pretrainer,
                optimizer=self.optimizer,
                keep=p.keep_checkpoints,
                is_chief=self.chief,
            )
        self.inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)

    def restore(self):
        return self.state.restore()

    def reload_state(self):
        pass  # variables were loaded in place

    def reschedule(self, total_steps, warmup_steps):
        """Sets the schedule and (re)builds the compiled loop for it."""
        self.schedule = _schedule(self.cfg.pretrain, total_steps, warmup_steps)
        self.inner.learning_rate = self.schedule
        self.train_loop = self._build_loop()

    def start_input(self, start_step):
        import tensorflow as tf

        from model import data as data_lib

        cfg, p = self.cfg, self.cfg.pretrain
        masker = _masker(cfg, self.vocab)

        def dataset_fn(context):
            return data_lib.pretraining_dataset(
                self.files,
                batch_size=context.get_per_replica_batch_size(p.batch_size),
                max_seq_length=cfg.data.max_seq_length,
                max_predictions_per_seq=cfg.data.max_predictions_per_seq,
                input_context=context,
                shuffle_buffer=p.shuffle_buffer,
                # A resumed run continues with a fresh order, not a replay.
                seed=p.seed + start_step,
                masker=masker,
            )

        dataset = self.strategy.distribute_datasets_from_function(dataset_fn)
        self.iterator = iter(dataset)
        self._tf = tf

    def _build_loop(self):
        from model.bert_pretrainer import INPUT_KEYS, METRIC_KEYS

        import tensorflow as tf

        from model.bert_pretrainer import combine_loss_terms, pretraining_loss_terms

        p, strategy, replicas = self.cfg.pretrain, self.strategy, self.replicas
        pretrainer, optimizer = self.pretrainer, self.optimizer
        variables = pretrainer.trainable_variables

        def replica_step(batch):
            with tf.GradientTape() as tape:
                outputs = pretrainer({k: batch[k] for k in INPUT_KEYS}, training=True)
                terms = pretraining_loss_terms(batch, outputs)
                sums = {k: tf.reduce_sum(v) for k, v in terms.items()}
                total_weight = sums["mlm_weight"]
                if replicas > 1:
                    total_weight = tf.distribute.get_replica_context().all_reduce(
                        tf.distribute.ReduceOp.SUM, total_weight
                    )
                # This replica's share: shares sum to the global-batch loss.
                losses = combine_loss_terms(
                    sums, total_weight, p.batch_size, p.sentence_loss_weight
                )
            training.apply_gradients(
                optimizer, losses["loss"], tape, variables, p.clipnorm, replicas
            )
            return losses

        if self.jit:
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def train_loop(iterator, num_steps):
            # `num_steps` steps in one call (steps_per_loop); the replica
            # step is traced once. Returns the last step's global metrics.
            values = {k: tf.constant(0.0) for k in METRIC_KEYS}
            for _ in tf.range(num_steps):
                shares = strategy.run(replica_step, args=(next(iterator),))
                values = {
                    k: strategy.reduce(tf.distribute.ReduceOp.SUM, shares[k], axis=None)
                    for k in METRIC_KEYS
                }
            return values

        return train_loop

    def run(self, step, num):
        return self.train_loop(self.iterator, self._tf.constant(num, self._tf.int32))

    def wait(self, out):
        out["loss"].numpy()

    def metrics(self, out):
        return {k: float(v) for k, v in out.items()}

    def learning_rate(self, step):
        return float(self.schedule(step))

    def save(self, step):
        self.state.save(step)

    def finish(self):
        pass


class _JaxSteps:
    """`keras.distribution` data parallelism, one jitted call of `k` steps
    (`lax.scan`, donated state, masks drawn on the device), `.npz`
    checkpoints, the TF-free numpy record reader. Imports no TensorFlow."""

    def __init__(self, cfg, files, model_dir, vocab):
        import keras

        from model import jax_training

        p = cfg.pretrain
        self.files, self.model_dir, self.vocab = files, model_dir, vocab
        self.jt = jax_training
        self.distribution = jax_training.create_distribution(p.strategy)
        self.process_index, self.process_count = jax_training.process_index_and_count()
        self.chief = self.process_index == 0
        device = jax_training.device_kind()
        precision = p.precision
        if precision == "auto":
            # XLA's CPU backend has no fast bf16 dots: float32 there.
            precision = "mixed_bfloat16" if device in ("gpu", "tpu") else "float32"
        self.cfg = cfg = cfg.replace(
            pretrain=dataclasses.replace(p, precision=precision, jit_compile="true")
        )
        _check_divisible(p.batch_size, self.process_count, "processes")
        replicas = (
            self.distribution.device_mesh.devices.size if self.distribution else 1
        )
        _check_divisible(p.batch_size, replicas, "devices")
        keras.utils.set_random_seed(p.seed)
        if self.distribution is not None:
            keras.distribution.set_distribution(self.distribution)
        # The step computes global gradients: the optimizer clips them.
        self.backbone, self.pretrainer, self.optimizer = _build(
            cfg, precision, global_clipnorm=p.clipnorm if p.clipnorm > 0 else None
        )
        self.optimizer.build(self.pretrainer.trainable_variables)
        self.checkpoints = jax_training.CheckpointFiles(
            model_dir,
            model=self.pretrainer,
            optimizer=self.optimizer,
            keep=p.keep_checkpoints,
            is_chief=self.chief,
        )
        self.masker = _masker(cfg, vocab)
        self.state = None

    def restore(self):
        step, path = self.checkpoints.restore()
        self.reload_state()
        return step, path

    def reload_state(self):
        self.state = self.jt.initial_state(self.pretrainer, self.optimizer)

    def reschedule(self, total_steps, warmup_steps):
        self.schedule = _schedule(self.cfg.pretrain, total_steps, warmup_steps)
        self.optimizer.learning_rate = self.schedule
        # The schedule's numbers are constants of the traced step: jit anew.
        self.train_call = self.jt.make_train_call(
            self.pretrainer,
            self.optimizer,
            masker=self.masker,
            seed=self.cfg.pretrain.seed,
            sentence_weight=self.cfg.pretrain.sentence_loss_weight,
        )

    def start_input(self, start_step):
        from model import data as data_lib

        cfg, p = self.cfg, self.cfg.pretrain
        self.batches = data_lib.numpy_pretraining_batches(
            self.files,
            batch_size=p.batch_size // self.process_count,
            max_seq_length=cfg.data.max_seq_length,
            max_predictions_per_seq=cfg.data.max_predictions_per_seq,
            # A resumed run continues with a fresh order, not a replay.
            seed=p.seed + start_step,
            process_index=self.process_index,
            process_count=self.process_count,
            shuffle_buffer=p.shuffle_buffer,
        )

    def run(self, step, num):
        import numpy as np

        try:
            host = [next(self.batches) for _ in range(num)]
        except ValueError as e:  # a record damaged past the pre-run check
            raise SystemExit(f"error: {e}") from None
        stacked = {k: np.stack([b[k] for b in host]) for k in host[0]}
        batches = self.jt.shard_batches(stacked, self.distribution)
        steps = np.arange(step, step + num, dtype=np.int32)
        self.state, out = self.train_call(self.state, batches, steps)
        return out

    def wait(self, out):
        out.block_until_ready()

    def metrics(self, out):
        import numpy as np

        return dict(zip(self.jt.METRIC_KEYS, np.asarray(out).tolist()))

    def learning_rate(self, step):
        return self.jt.on_host(self.schedule, step)

    def save(self, step):
        self.checkpoints.save(step, self.state)

    def finish(self):
        # Final weights back into the Keras variables (for save_weights).
        self.jt.assign_state(self.pretrainer, self.optimizer, self.state)


def _build(cfg, precision, global_clipnorm=None):
    """(backbone, pretrainer, optimizer) of `cfg`, in the caller's scope.

    The optimizer's schedule is replaced by `reschedule` (a budget run
    sizes it only after timing steps).
    """
    from model.bert_backbone import BertBackbone
    from model.bert_pretrainer import BertPretrainer

    from model.optimization import create_optimizer

    p = cfg.pretrain
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
        global_clipnorm=global_clipnorm,
    )
    return backbone, pretrainer, optimizer


def _check_divisible(batch_size, parts, what):
    if batch_size % parts:
        raise SystemExit(
            f"error: batch_size {batch_size} is not divisible by {parts} {what}"
        )


def _schedule(p, total_steps, warmup_steps):
    from model.optimization import WarmupLinearDecay

    return WarmupLinearDecay(p.learning_rate, total_steps, warmup_steps)


def _masker(cfg, vocab):
    if cfg.pretrain.masking != "dynamic":
        return None
    from model.masking import DynamicMasker

    return DynamicMasker.from_config(vocab, cfg.data)


def _config_from_init_checkpoint(cfg, path):
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
        vocab_path = os.path.join(tempfile.mkdtemp(prefix="vocab-"), "vocab.txt")
        fileio.write_atomic(vocab_path, "\n".join(ckpt.vocab) + "\n")
    if vocab_path:
        if cfg.data.vocab_file and cfg.data.vocab_file != vocab_path:
            checkpoints.check_vocab(
                ckpt, features.read_vocab(cfg.data.vocab_file), cfg.data.vocab_file
            )
        data = dataclasses.replace(data, vocab_file=vocab_path)
    model = dataclasses.replace(model, dropout=cfg.model.dropout)
    print(f"model config from {ckpt.description}", flush=True)
    return cfg.replace(model=model, data=data).validate()


def _load_init_checkpoint(path, backbone, pretrainer):
    """Encoder and heads from `path`; one note per part initialised."""
    from model import checkpoints

    try:
        ckpt = checkpoints.inspect(path)
        notes = checkpoints.load_pretraining_heads(ckpt, pretrainer)
    except ConfigError as e:
        raise SystemExit(f"error: --init_checkpoint: {e}") from None
    for note in notes:
        print(f"note: {note}", flush=True)


def main():
    quiet_tensorflow_logs()
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
