"""Loop pieces shared by pretraining and fine-tuning.

TensorFlow is imported only inside the TF-only pieces (`apply_gradients`,
`CheckpointState`, the TensorBoard writer), so the JAX trainer can use the
rest on a machine without TensorFlow.

- `choose_fast_path`: the one place that picks precision and XLA per size
  and device when the config says `auto`.
- `apply_gradients`: one cross-replica sum, global-norm clip, loss-scale
  aware apply, valid under every `tf.distribute` strategy.
- `CheckpointState`: `tf.train.CheckpointManager` over model, optimizer and
  step; automatic resume from `model_dir`.
- `MetricsLogger`: `metrics.jsonl` + TensorBoard scalars (chief only).
- `ProgressPrinter`: one console line per log step with throughput and ETA.
- `plot_metrics`: PNG of the loss/accuracy curves (matplotlib Agg).
- Faults: `check_finite` (divergence), `StopSignals` (Ctrl-C / SIGTERM),
  `save_weights_atomic` and `clear_leftovers` (full disks, killed runs).
"""

import contextlib
import glob
import json
import math
import os
import signal
import socket
import struct
import sys
import time
import uuid

from configs import fileio, records

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
CHECKPOINT_SUBDIR = "checkpoints"
TENSORBOARD_SUBDIR = "logs"


def choose_fast_path(precision, jit_compile, hidden_dim, device, num_replicas):
    """Resolves `auto` precision / XLA settings to what runs fastest.

    Measured on this project's 2-core Xeon with AMX (benchmarks/
    train_throughput.py, results/train_throughput.md): with the XLA-fused
    elementwise kernels of `model/fused_ops.py` (used in every training
    step that is not XLA-compiled as a whole), bfloat16 on oneDNN/AMX
    without whole-step XLA is fastest at every size, BERT-tiny included
    (119 vs 59 seq/s for float32 + whole-step XLA, which was the best
    setting for tiny before the fused kernels). XLA's CPU backend does not
    use the bf16 AMX kernels, so whole-step XLA stays off on CPU. CPUs
    without bf16 instructions train in float32. GPUs: bfloat16 with XLA;
    TPUs compile everything anyway. `hidden_dim` is kept for callers; no
    setting depends on it now. `model.pretrain` (TensorFlow, CPU with bf16
    instructions) replaces this static rule for precision by a timed probe
    of its own step (`model.precision_probe`); this rule is the probe's
    fallback and fine-tuning's.

    Args:
        precision: "auto" | "float32" | "mixed_bfloat16" | "mixed_float16".
        jit_compile: "auto" | "true" | "false".
        hidden_dim: int, the model width.
        device: "cpu" | "gpu" | "tpu".
        num_replicas: int, replicas in sync.

    Returns:
        (dtype policy name, bool jit_compile).
    """
    del hidden_dim  # see the docstring
    if precision == "auto":
        if device in ("gpu", "tpu") or _cpu_has_bf16():
            precision = "mixed_bfloat16"
        else:
            precision = "float32"
    if jit_compile == "auto":
        # TPUStrategy compiles everything anyway; on CPU the fused kernels
        # beat whole-step XLA (and XLA does not combine with
        # MirroredStrategy over logical CPUs).
        jit = device == "gpu"
    else:
        jit = jit_compile == "true"
    return precision, jit


def _cpu_has_bf16():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def apply_gradients(optimizer, loss, tape, variables, clipnorm, num_replicas):
    """Computes, sums, clips and applies gradients (in replica context).

    Gradients are summed across replicas here, once, so that clipping uses
    the global norm of the global gradient (google-research/bert's
    `clip_by_global_norm`). Keras' TF optimizer would all-reduce (sum) them
    a second time inside `apply`; `_sum_across_replicas_once` turns that
    off for this optimizer, so one all-reduce per step moves the gradients.

    Args:
        optimizer: Keras optimizer (maybe a `LossScaleOptimizer`).
        loss: this replica's share of the global loss (already divided by
            the global batch), NOT yet loss-scaled.
        tape: the `tf.GradientTape` that recorded `loss` (loss scaling for
            float16 happens here, by seeding backprop with the scale).
        variables: trainable variables.
        clipnorm: float; <= 0 disables clipping.
        num_replicas: int.

    Returns the global gradient norm (before clipping).
    """
    import keras
    import tensorflow as tf

    scale = None
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Seeding backprop with the scale == differentiating loss * scale,
        # which keeps float16 gradients above underflow.
        scale = tf.cast(tf.convert_to_tensor(optimizer.dynamic_scale), loss.dtype)
        grads = tape.gradient(loss, variables, output_gradients=scale)
    else:
        grads = tape.gradient(loss, variables)
    grads = [tf.convert_to_tensor(g) for g in grads]
    summed_once = False
    if num_replicas > 1:
        context = tf.distribute.get_replica_context()
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        summed_once = _sum_across_replicas_once(optimizer)
    if scale is not None:
        grads = [g / scale for g in grads]
    norm = tf.linalg.global_norm(grads)
    if clipnorm and clipnorm > 0:
        grads, _ = tf.clip_by_global_norm(grads, clipnorm, use_norm=norm)
    if scale is not None:
        grads = [g * scale for g in grads]  # the optimizer unscales
    if num_replicas > 1 and not summed_once:
        # This Keras sums again in `apply`: hand it `sum / num_replicas`.
        grads = [g / num_replicas for g in grads]
    optimizer.apply_gradients(zip(grads, variables))
    return norm


def _sum_across_replicas_once(optimizer):
    """Stops Keras' TF optimizer from all-reducing already summed grads.

    Keras 3's `TFOptimizer._backend_update_step` sums the gradients across
    replicas with `_all_reduce_sum_gradients` (no switch to skip it, unlike
    Keras 2's `experimental_aggregate_gradients=False`). Replacing that
    method on this optimizer instance with the identity keeps the update
    itself (per-replica `extended.update` on mirrored variables) and drops
    the second all-reduce. Returns False (and changes nothing) on a Keras
    without that method, where the caller divides by the replica count.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not hasattr(inner, "_all_reduce_sum_gradients"):
        return False
    if not getattr(inner, "_grads_summed_by_loop", False):
        inner._all_reduce_sum_gradients = lambda grads_and_vars: list(grads_and_vars)
        inner._grads_summed_by_loop = True
    return True


class CheckpointState:
    """Checkpoints of (model, optimizer, step) in `model_dir/checkpoints`.

    `restore()` loads the latest checkpoint if any (automatic resume) and
    returns the step to continue from. On a multi-worker non-chief, saving
    goes to a private temp directory (every worker must take part in the
    save; only the chief's copy is kept), as TF's multi-worker guide says.
    """

    def __init__(self, model_dir, *, model, optimizer, keep, is_chief=True):
        import tensorflow as tf

        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=self.step
        )
        self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
        self.is_chief = is_chief
        self.keep = keep
        self._model, self._optimizer = model, optimizer
        self._write_dir = self.directory
        if not is_chief:
            self._write_dir = os.path.join(model_dir, ".tmp_worker", str(os.getpid()))
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._write_dir, max_to_keep=keep
        )

    def restore(self):
        """Loads the newest intact checkpoint; returns (step, prefix or None).

        Checkpoints are found by their files (`ckpt-N.index`), not only by
        the `checkpoint` index file, so a deleted index resumes from what
        exists. A damaged newest checkpoint (cut short, unreadable) is
        named in one line and the next older one is tried; when none
        loads, `CheckpointError` refuses to start over the run's history.
        """
        import tensorflow as tf

        state = tf.train.get_checkpoint_state(self.directory)
        listed = list(state.all_model_checkpoint_paths) if state else []
        found = {
            p[: -len(".index")]
            for p in glob.glob(os.path.join(self.directory, "ckpt-*.index"))
        }
        prefixes = sorted(
            found | {os.path.join(self.directory, os.path.basename(p)) for p in listed},
            key=_checkpoint_number,
            reverse=True,
        )
        if not prefixes:
            return 0, None
        if state is None:
            print(
                f"note: {self.directory}/checkpoint (the index) is missing: "
                f"resuming from the checkpoint files found ({len(prefixes)})",
                flush=True,
            )
        prefix, _, damaged = restore_newest_intact(
            prefixes,
            lambda p: self.checkpoint.restore(p).assert_existing_objects_matched(),
            (tf.errors.OpError, ValueError, IndexError, AssertionError),
            self.directory,
        )
        if self.is_chief and (damaged or state is None):
            self._rebuild_index(prefix, [p for p in prefixes if p not in damaged])
        return int(self.step.numpy()), prefix

    def _rebuild_index(self, latest, intact):
        """Writes the `checkpoint` index for the intact checkpoints, so the
        manager keeps and deletes them as if the index had never broken."""
        import tensorflow as tf

        tf.compat.v1.train.update_checkpoint_state(
            self.directory,
            latest,
            all_model_checkpoint_paths=sorted(intact, key=_checkpoint_number),
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._write_dir, max_to_keep=self.keep
        )

    def save(self, step):
        self.step.assign(step)
        variables = list(self._model.weights) + list(self._optimizer.variables)
        check_free_space(self.directory, weights_bytes(variables) + (1 << 20))
        try:
            path = self.manager.save(checkpoint_number=step)
        except Exception as e:
            # TensorFlow writes `ckpt-N_temp/` and renames it when whole: a
            # failed write (a file-size limit, a full disk) leaves it.
            for temp in glob.glob(os.path.join(self._write_dir, f"ckpt-{step}_temp*")):
                fileio.remove(temp)
            if fileio.is_disk_full(e):
                raise fileio.disk_full_error(e, self.directory) from None
            raise
        if not self.is_chief:
            fileio.remove(self.manager.directory)
        return path


class CheckpointError(Exception):
    """No checkpoint of a run's history can be restored (one line)."""


def restore_newest_intact(candidates, load, errors, directory):
    """Loads the first of `candidates` (newest first) that `load` can read.

    The one fallback rule of both backends' checkpoints: a damaged one (cut
    short, emptied; `load` raises one of `errors`) is named in one line and
    the next older one is tried; falling back is said in one line.

    Args:
        candidates: checkpoint paths or prefixes, newest first.
        load: callable(candidate) -> anything; raises on a damaged one.
        errors: the exception types that mean "damaged".
        directory: where they live (named when none can be read).

    Returns:
        (candidate, what `load` returned, list of the damaged ones before
        it); (None, None, []) when there are no candidates.

    Raises:
        CheckpointError: there are candidates but none can be read; the
            run's history is not started over without --overwrite.
    """
    damaged = []
    for candidate in candidates:
        try:
            loaded = load(candidate)
        except errors as e:
            print(f"checkpoint {candidate} is damaged ({_first_line(e)})", flush=True)
            damaged.append(candidate)
            continue
        if damaged:
            print(
                f"falling back to {candidate}, the newest intact checkpoint",
                flush=True,
            )
        return candidate, loaded, damaged
    if damaged:
        raise CheckpointError(
            f"no checkpoint in {directory} can be read (newest "
            f"{damaged[0]}): pass --overwrite to start the run again"
        )
    return None, None, []


def _checkpoint_number(prefix):
    try:
        return int(os.path.basename(str(prefix)).split("-")[-1].split(".")[0])
    except ValueError:
        return -1


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


class MetricsLogger:
    """Appends to `model_dir/metrics.jsonl` and writes TensorBoard scalars.

    On resume, lines past the restored step (logged after the last save of
    the killed run) are dropped so each step appears once. TensorBoard
    event files come from `tf.summary` with `tensorboard=True` (the
    TensorFlow backend) and from `EventFileWriter` otherwise (the JAX
    trainer, which imports no TensorFlow).
    """

    def __init__(self, model_dir, *, is_chief=True, resume_step=0, tensorboard=True):
        self.enabled = is_chief
        self.path = fileio.join(model_dir, METRICS_FILE)
        self.writer = None
        if not self.enabled:
            return
        fileio.makedirs(model_dir)
        if fileio.exists(self.path):
            kept = [
                line
                for line in read_metrics(self.path)
                if line.get("step", 0) <= resume_step
            ]
            fileio.write_atomic(
                self.path, "".join(json.dumps(line) + "\n" for line in kept)
            )
        logdir = fileio.join(model_dir, TENSORBOARD_SUBDIR, "train")
        if tensorboard:
            import tensorflow as tf

            self.writer = tf.summary.create_file_writer(logdir)
        else:
            self.writer = EventFileWriter(logdir)

    def log(self, step, values):
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: float(v) for k, v in values.items()})
        with fileio.names_errors(self.path), fileio.open_file(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if isinstance(self.writer, EventFileWriter):
            self.writer.scalars(int(step), values)
            return
        with self.writer.as_default(step=int(step)):
            for key, value in values.items():
                write_scalar(key, float(value), int(step))
        self.writer.flush()


class EventFileWriter:
    """TensorBoard scalars written without TensorFlow.

    An event file is TFRecord-framed `Event` protos: a first one with
    `file_version`, then one per logged step whose `Summary` holds a
    `simple_value` per metric. The few proto fields are encoded here
    (Event: wall_time=1 double, step=2 int64, file_version=3 string,
    summary=5; Summary: value=1; Value: tag=1 string, simple_value=2
    float), which TensorBoard and `tf.compat.v1.train.summary_iterator`
    read as `tf.summary.scalar` output.
    """

    def __init__(self, logdir):
        fileio.makedirs(logdir)
        name = (
            f"events.out.tfevents.{int(time.time())}."
            f"{socket.gethostname()}.{os.getpid()}.v2"
        )
        self.path = fileio.join(logdir, name)
        self._write(records.proto_field(0x1A, b"brain.Event:2"))  # file_version

    def scalars(self, step, values):
        """One event at `step` (int) with `values` ({tag: float})."""
        field = records.proto_field
        summary = b"".join(
            # Summary.value (1) = Value{tag (1), simple_value (2, float)}
            field(
                0x0A, field(0x0A, tag.encode()) + b"\x15" + struct.pack("<f", float(v))
            )
            for tag, v in values.items()
        )
        # Event.step (2, varint), Event.summary (5)
        self._write(b"\x10" + records.varint(step) + field(0x2A, summary))

    def _write(self, event_fields):
        event = b"\x09" + struct.pack("<d", time.time()) + event_fields
        with fileio.names_errors(self.path), fileio.open_file(self.path, "ab") as f:
            f.write(records.tfrecord_frame(event))


def write_scalar(tag, value, step):
    """A TensorBoard scalar without importing the `tensorboard` package.

    Writes what `tf.summary.scalar` writes (plugin "scalars", float32
    scalar tensor) through the core `tf.summary.write` op, so logging
    works where only TensorFlow is installed.
    """
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    tf.summary.write(
        tag,
        tf.constant(value, tf.float32),
        step=step,
        metadata=metadata.SerializeToString(),
    )


def read_metrics(path):
    """The records of a `metrics.jsonl` file (list of dicts)."""
    return [
        json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()
    ]


class ProgressPrinter:
    """Console progress: step, loss, accuracy, examples/s and ETA."""

    KEYS = ("loss", "mlm_accuracy", "sentence_accuracy", "accuracy")

    def __init__(self, total_steps, start_step, stream=None, enabled=True, keys=KEYS):
        """`keys`: the logged values shown, in order, when present."""
        self.total_steps = total_steps
        self.start_step = start_step
        self.start_time = time.time()
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.keys = tuple(keys)

    def update(self, step, values):
        if not self.enabled:
            return
        elapsed = time.time() - self.start_time
        done = max(step - self.start_step, 1)
        eta = elapsed / done * (self.total_steps - step)
        parts = [f"step {step}/{self.total_steps}"]
        parts += [f"{k} {values[k]:.4f}" for k in self.keys if k in values]
        if "examples_per_second" in values:
            parts.append(f"{values['examples_per_second']:.1f} ex/s")
        parts.append(f"ETA {_format_seconds(eta)}")
        print(" | ".join(parts), file=self.stream, flush=True)


def _format_seconds(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def plot_metrics(metrics_path, png_path, keys=None):
    """Plots losses and accuracies from `metrics.jsonl` into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    if not records:
        return None
    keys = keys or sorted(
        {k for r in records for k in r if k.endswith(("loss", "accuracy"))}
    )
    losses = [k for k in keys if k.endswith("loss")]
    accuracies = [k for k in keys if k.endswith("accuracy")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group, title in (
        (axes[0], losses, "loss"),
        (axes[1], accuracies, "accuracy"),
    ):
        for key in group:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=key)
        ax.set_xlabel("step")
        ax.set_title(title)
        if group:
            ax.legend()
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    fileio.write_atomic(png_path, buffer.getvalue())
    return png_path


# === Faults: divergence, signals, full disks, leftovers ===
class Diverged(Exception):
    """A non-finite loss: training stops before anything of it is saved."""


def check_finite(loss, step, last_finite, learning_rate):
    """Raises `Diverged` (one line) when `loss` is NaN or infinite.

    Args:
        loss: float, the loss seen at `step`.
        step: int, the step that produced it.
        last_finite: (step, loss) of the last finite loss seen, or None.
        learning_rate: float, the learning rate of that step.

    Bad steps are not skipped (as some trainers do, e.g. fairseq's
    `--skip-invalid-size-inputs`): the host sees the loss only every
    `log_every`/`steps_per_loop` steps, when the weights have already
    taken the NaN update, so skipping would need a second copy of every
    weight and optimizer slot on the device. float16 overflow, the one
    benign cause, is skipped already by the loss-scale optimizer.
    """
    if math.isfinite(loss):
        return
    before = "no finite loss was seen before it"
    if last_finite is not None:
        before = f"last finite loss {last_finite[1]:.4g} at step {last_finite[0]}"
    raise Diverged(
        f"training diverged: loss {loss} at step {step} ({before}; learning "
        f"rate {learning_rate:.3g}); nothing from this step was saved: lower "
        "--learning_rate or raise --warmup_steps"
    )


class Interrupted(Exception):
    """SIGINT or SIGTERM; `exit_code` is 128 + the signal number."""

    def __init__(self, signum):
        self.signum = signum
        self.exit_code = 128 + signum
        self.name = signal.Signals(signum).name
        self.where = "before training started: nothing was saved"
        super().__init__(self.name)


class StopSignals:
    """SIGINT/SIGTERM handling for a training loop (preemption, Ctrl-C).

    Outside `deferred()` a signal raises `Interrupted` at once. Inside, it
    only sets `received`, which the loop polls between compiled calls to
    save a checkpoint and stop cleanly; a second signal raises at once.
    Installs handlers only in the main thread; restores them on exit.
    """

    def __init__(self):
        self.received = None
        self._deferring = False
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        return False

    def _handle(self, signum, frame):
        if self._deferring and self.received is None:
            self.received = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False

    def raise_if_received(self):
        if self.received is not None:
            raise Interrupted(self.received)


def weights_bytes(variables):
    """Bytes the values of `variables` take (a lower bound of a save)."""
    return sum(int(math.prod(v.shape)) * _itemsize(v.dtype) for v in variables)


def _itemsize(dtype):
    import keras
    import numpy as np

    return np.dtype(keras.backend.standardize_dtype(dtype)).itemsize


def check_free_space(path, needed):
    """Raises a disk-full OSError naming `path` when `needed` bytes do not fit.

    Checked before h5py and TensorFlow write: h5py on a full disk can
    crash the process (a segfault in the probe of issue 19), so the save
    is not attempted when it cannot fit.
    """
    import errno

    free = fileio.free_bytes(path)
    if free is not None and free < needed:
        raise OSError(errno.ENOSPC, f"needs about {needed} bytes", str(path))


def save_weights_atomic(model, path):
    """`model.save_weights(path)` under a temporary name, then renamed.

    A full disk or a kill leaves the previous file (or none), never a cut
    one under the final name. Remote paths are written locally and copied.
    """
    needed = weights_bytes(model.weights) + (1 << 20)
    if fileio.is_remote(path):
        local = os.path.join(fileio.scratch_dir(), os.path.basename(path))
        _save_model_weights(model, local)
        fileio.copy(local, path, overwrite=True)
        return path
    directory, name = os.path.split(str(path))
    check_free_space(path, needed)
    # The name must end in `.weights.h5` (Keras), hence a prefix.
    temp = os.path.join(directory, f"tmp-{uuid.uuid4().hex[:8]}-{name}")
    try:
        with fileio.names_errors(path):
            _save_model_weights(model, temp)
    except BaseException as e:
        with contextlib.suppress(Exception):
            fileio.remove(temp)
        if fileio.is_disk_full(e) and not isinstance(e, OSError):
            raise fileio.disk_full_error(e, path) from e
        raise
    fileio.rename(temp, path, overwrite=True)
    return path


def _save_model_weights(model, path):
    """The model's weights alone, without a compiled model's optimizer state.

    Keras' `save_weights` also writes the optimizer's variables of a
    compiled model (AdamW's two slots: a fine-tuning run's
    `best.weights.h5` was 3x its weights). These files are read only as
    weights (export, `--init_checkpoint`); resuming uses the checkpoints.
    Falls back to `save_weights` on a Keras without `objects_to_skip`.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        try:
            from keras.src.saving import saving_lib

            saving_lib.save_weights_only(model, path, objects_to_skip=[optimizer])
            return
        except (ImportError, TypeError):
            pass
    model.save_weights(path)


# What a killed or disk-full run leaves: temporaries of `write_atomic`
# (`*.tmp-*`), of `save_weights_atomic` (`tmp-*-*.weights.h5`) and of
# TensorFlow's CheckpointManager (`ckpt-N_temp*`, `*.tempstate*`).
LEFTOVER_PATTERNS = (
    "*.tmp-*",
    "tmp-*-*.weights.h5",
    os.path.join("*", "tmp-*-*.weights.h5"),
    os.path.join(CHECKPOINT_SUBDIR, "*.tmp-*"),
    os.path.join(CHECKPOINT_SUBDIR, "*_temp*"),
    os.path.join(CHECKPOINT_SUBDIR, "*.tempstate*"),
)


def clear_leftovers(model_dir):
    """Removes what a killed or failed run left in local `model_dir`."""
    if fileio.is_remote(model_dir) or not os.path.isdir(model_dir):
        return []
    removed = []
    for pattern in LEFTOVER_PATTERNS:
        for path in glob.glob(os.path.join(model_dir, pattern)):
            fileio.remove(path)
            removed.append(path)
    return removed
