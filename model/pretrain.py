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
checkpoint in `model_dir`; run one loop that logs, checkpoints, evaluates
on held-out records (`--eval_data`, or `eval/` beside the records) and
keeps the wall-clock budget; at the end write `encoder.weights.h5` for
`model.finetune`, a PNG plot and `pretrain_summary.json`.

This module is the command (`parse_args`, `resolve_config`, `run`) and
the loop (`train`); its pieces live beside it: `pretrain_checks` (records,
vocabulary and `model_dir` checked before anything is built),
`pretrain_init` (`--init_checkpoint`), `pretrain_budget` (the wall-clock
budget and the schedule), `pretrain_eval` (the held-out evaluation) and
`pretrain_steps` (the two backends).

Outputs in `model_dir` (both backends): `config.yaml` (resolved, with the
backend), `checkpoints/`, `metrics.jsonl`, `metrics.png`, `logs/train`
(TensorBoard), `encoder.weights.h5`, `vocab.txt`, `pretrain_summary.json`
(the final step, training and held-out metrics).
"""

import argparse
import dataclasses
import json
import sys
import time

from configs import fileio, output_lock
from configs.cli import (
    add_overwrite_flag,
    flag_help,
    program_name,
    quiet_tensorflow_logs,
)
from configs.loader import dump_config, load_config
from configs.schema import ConfigError, PretrainConfig
from model import pretrain_budget as budget
from model import pretrain_checks, pretrain_eval, pretrain_init, pretrain_steps
from model import training
from model.pretrain_checks import check_data, check_resumable

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
    "eval_data",
    "eval_every",
    "eval_batches",
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
    add_overwrite_flag(
        parser.add_argument,
        "start over: delete the earlier run's checkpoints, metrics and "
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
                pretrain_checks.check_model_dir(args.model_dir)
                output_lock.acquire(args.model_dir, "model.pretrain")  # before work
                cfg = resolve_config(args)
                cfg = resolve_backend(cfg)
                cfg = pretrain_init.config_from_init_checkpoint(
                    cfg, args.init_checkpoint
                )
                cfg, files, meta, vocab = check_data(
                    cfg,
                    args.data,
                    # An --init_checkpoint's size replaced the config's above.
                    vocabulary_size_set=bool(args.init_checkpoint)
                    or vocabulary_size_is_set(args),
                    model_dir=args.model_dir,
                )
                budget.check_budget(cfg.pretrain)
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
    steps_cls = (
        pretrain_steps.JaxSteps
        if p.backend == "jax"
        else pretrain_steps.TensorFlowSteps
    )
    runner = steps_cls(cfg, files, model_dir, vocab)
    cfg = runner.cfg  # with precision / XLA resolved
    p = cfg.pretrain
    start_step, latest = runner.restore()
    if latest:
        print(f"resuming from {latest} at step {start_step}", flush=True)
    elif init_checkpoint:
        pretrain_init.load_init_checkpoint(
            init_checkpoint, runner.backbone, runner.pretrainer
        )
        runner.reload_state()
        print(f"initialized from {init_checkpoint}", flush=True)
    total_steps, warmup_steps = p.steps, budget.warmup_steps_of(p, p.steps)
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
        total_steps, warmup_steps = budget.recorded_schedule(model_dir, p)
        budgeted = False
    runner.reschedule(total_steps, warmup_steps)
    if runner.chief:
        dump_config(budget.with_schedule(cfg, total_steps, warmup_steps), model_dir)
        pretrain_checks.copy_vocab(cfg, model_dir)
    if start_step >= total_steps:
        print(f"already at step {start_step} >= steps {total_steps}", flush=True)
    runner.start_input(start_step)
    held_out = pretrain_eval.load(cfg)
    eval_every = p.eval_every or p.save_every
    with_sentence = p.sentence_loss_weight > 0
    eval_seconds = 0.0  # the last evaluation's time (budget reserve)

    def evaluate(at_step):
        nonlocal eval_seconds
        began = time.time()
        metrics = pretrain_eval.evaluate(runner, held_out, with_sentence)
        eval_seconds = time.time() - began
        if runner.chief:
            line = pretrain_eval.format_line(at_step, metrics, held_out, eval_seconds)
            print(line, flush=True)
        return metrics

    # === Loop: log, checkpoint, progress ===
    logger = training.MetricsLogger(
        model_dir,
        is_chief=runner.chief,
        resume_step=start_step,
        tensorboard=p.backend == "tensorflow",
    )
    shown = training.ProgressPrinter.KEYS
    if p.sentence_loss_weight == 0:
        # Logged still, but not trained: a chance-level number on the
        # console would read as a problem.
        shown = tuple(k for k in shown if k != "sentence_accuracy")
    progress = training.ProgressPrinter(
        total_steps, start_step, enabled=runner.chief, keys=shown
    )
    step, last_saved, values = start_step, start_step, {}
    final_eval = None
    if held_out is not None and start_step == 0:
        # The starting point of the held-out curve (and the time an
        # evaluation takes, reserved by a budget run).
        final_eval = evaluate(0)
        logger.log(0, final_eval)
    window_start, window_steps = time.time(), 0
    first_call_seconds = None
    probe = None  # (start time, start step) of the budget probe
    # The budget's re-fits: the pace is measured from `refit_window`, taken
    # once the step compiled for the current schedule has run.
    refits, refit_window, refit_pending = 0, None, False
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
            if held_out is not None:
                num = min(num, eval_every - step % eval_every)
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
            # The budget: fitted once after the probe, then again at
            # `budget.REFIT_AT`, each time from the steps timed since.
            fitted = None
            reserve = {
                "eval_seconds": eval_seconds if held_out is not None else 0.0,
                "eval_every": eval_every,
            }
            if budgeted and budget.probe_done(probe, p, runner, out):
                budgeted = False
                fitted = budget.fit_budget(
                    p, started, probe, step, first_call_seconds, **reserve
                )
            elif refit_pending:
                # This call compiled the new schedule's step.
                runner.wait(out)
                refit_window, refit_pending = (time.time(), step), False
            elif refit_window and budget.refit_due(p, started, refits):
                refits += 1
                runner.wait(out)  # measure finished steps, not queued ones
                fitted = budget.refit(
                    p,
                    started,
                    refit_window,
                    step,
                    (total_steps, warmup_steps),
                    first_call_seconds,
                    **reserve,
                )
            if fitted is not None:
                if fitted != (total_steps, warmup_steps):
                    total_steps, warmup_steps = fitted
                    runner.reschedule(total_steps, warmup_steps)
                    progress.total_steps = total_steps
                    if runner.chief:
                        dump_config(
                            budget.with_schedule(cfg, total_steps, warmup_steps),
                            model_dir,
                        )
                refit_pending = True
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
            eval_values = {}
            eval_now = step % eval_every == 0 or step >= total_steps
            if held_out is not None and eval_now and signals.received is None:
                if not (log_now or save_now):
                    loss = float(runner.metrics(out)["loss"])
                    training.check_finite(
                        loss, step, last_finite, runner.learning_rate(step - 1)
                    )
                    last_finite = (step, loss)
                eval_values = final_eval = evaluate(step)
                # Training throughput and the budget probe leave it out.
                window_start += eval_seconds
                if probe is not None:
                    probe = (probe[0] + eval_seconds, probe[1])
                if refit_window is not None:
                    refit_window = (refit_window[0] + eval_seconds, refit_window[1])
                if not log_now:
                    logger.log(step, eval_values)
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
                logger.log(step, {**values, **eval_values})
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

    if held_out is not None and final_eval is None:
        # Nothing trained here (a finished run rerun): evaluated for the
        # summary only; its metrics.jsonl already holds this step.
        final_eval = evaluate(step)

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
        pretrain_eval.write_summary(
            model_dir,
            step=step,
            steps=total_steps,
            started=started,
            train_metrics=values or _last_logged(model_dir, step),
            eval_metrics=final_eval,
            cfg=cfg,
            held_out=held_out,
        )
    return {**values, **(final_eval or {})}


def _last_logged(model_dir, step):
    """The training metrics metrics.jsonl holds for `step` (a rerun of a
    finished run trains nothing), or {}."""
    path = fileio.join(model_dir, training.METRICS_FILE)
    if not fileio.exists(path):
        return {}
    for record in reversed(training.read_metrics(path)):
        if record.get("step") == step and "loss" in record:
            return {
                k: v
                for k, v in record.items()
                if k != "step" and not k.startswith("eval_")
            }
    return {}


def main():
    quiet_tensorflow_logs()
    run(sys.argv[1:])


if __name__ == "__main__":
    main()
