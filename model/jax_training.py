"""Loop pieces of the JAX backend of `model.pretrain` (no TensorFlow).

- `create_distribution`: `--strategy` names -> `keras.distribution`
  (data-parallel over all local devices, multi-host via
  `keras.distribution.initialize()`).
- `make_train_call`: one jitted call of `k` optimizer steps (`lax.scan`)
  over the pretrainer's `stateless_call`, with on-device dynamic masking
  and donated state buffers.
- `CheckpointFiles`: model + optimizer state in `model_dir/checkpoints/
  ckpt-<step>.npz`, written under a temporary name and renamed, so a killed
  run never leaves a checkpoint that a resume would trust half written.

Under `keras.distribution.DataParallel` the variables are replicated and
every batch is one global array sharded along its batch axis, so the
jitted step computes the GLOBAL-batch loss and its gradient (XLA inserts
the all-reduce): the same numbers as one device, by construction.
"""

import io
import re
import zipfile

import keras
import numpy as np

from configs import fileio
from model.bert_pretrainer import INPUT_KEYS, METRIC_KEYS

# What each `--strategy` name means under JAX (also in `--help`).
STRATEGY_MEANING = {
    "default": "one device (the first accelerator, else the CPU)",
    "one_device": "one device (the first accelerator, else the CPU)",
    "mirrored": "keras.distribution.DataParallel over all local devices",
    "multi_worker": "keras.distribution.initialize() (multi-host, from the "
    "KERAS_DISTRIBUTION_* environment), then DataParallel over all devices",
    "tpu": "DataParallel over all TPU devices (JAX sees them directly)",
}


def create_distribution(name):
    """The `keras.distribution` for `--strategy=name`, or None (one device).

    Must be called before the model is built: variables are laid out by
    the distribution in force when they are created.
    """
    import jax

    if name in ("default", "one_device"):
        return None
    if name == "multi_worker":
        keras.distribution.initialize()
    devices = jax.devices()
    if name == "tpu" and devices[0].platform != "tpu":
        raise ValueError("--strategy=tpu but JAX sees no TPU")
    if len(devices) == 1:
        return None
    return keras.distribution.DataParallel(devices=devices)


def device_kind():
    """ "tpu", "gpu" or "cpu": the platform of JAX's default devices."""
    import jax

    platform = jax.devices()[0].platform
    return platform if platform in ("tpu", "gpu") else "cpu"


def on_host(fn, *args):
    """`float(fn(*args))` computed on the host CPU device.

    On an accelerator the small computation would queue behind the train
    call in flight, and reading it back would wait for that call.
    """
    import jax

    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        return float(fn(*args))


def process_index_and_count():
    import jax

    return jax.process_index(), jax.process_count()


def shard_batches(batches, distribution):
    """Device arrays for a host's stacked batches `{key: [k, b_host, ...]}`.

    With a distribution, the host's rows become its part of one global array
    sharded along the batch axis (axis 1); otherwise a plain device put.
    """
    import jax

    if distribution is None:
        return jax.device_put(batches)
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = distribution.device_mesh.backend_mesh
    sharding = NamedSharding(mesh, PartitionSpec(None, distribution.batch_dim_name))
    return {
        k: jax.make_array_from_process_local_data(sharding, v)
        for k, v in batches.items()
    }


def make_train_call(pretrainer, optimizer, *, masker=None, seed=0, sentence_weight=1.0):
    """A jitted `(state, batches, steps) -> (state, metrics)`.

    Args:
        pretrainer: a built `BertPretrainer`.
        optimizer: a built Keras optimizer for its trainable variables
            (global-norm clipping, if any, is the optimizer's own).
        masker: optional `DynamicMasker`; called as `masker.mask(batch,
            seed)` on the device, with a seed made of (`seed`, step), so a
            resumed run draws the masks the uninterrupted one would have.
        seed: int, the run's seed.
        sentence_weight: float, the sentence loss's weight (0 = MLM only).

    The returned function takes `state = (trainable, non_trainable,
    optimizer_variables)` (lists of arrays; donated), `batches`: dict of
    arrays `[k, batch, ...]` (the feature dict of k steps) and `steps`:
    int32 `[k]` (global step numbers, for mask seeds), and returns the new
    state and float32 `[len(METRIC_KEYS)]`, the LAST step's metrics over
    the global batch.
    """
    import jax
    import jax.numpy as jnp

    from model.bert_pretrainer import pretraining_losses

    def loss_fn(trainable, non_trainable, batch):
        outputs, non_trainable = pretrainer.stateless_call(
            trainable, non_trainable, {k: batch[k] for k in INPUT_KEYS}, training=True
        )
        losses = pretraining_losses(batch, outputs, sentence_weight)
        return losses["loss"], (non_trainable, losses)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one_step(state, inputs):
        trainable, non_trainable, opt_vars = state
        batch, step = inputs
        if masker is not None:
            step_seed = jnp.stack([jnp.int32(seed), step.astype(jnp.int32)])
            batch = masker.mask(batch, step_seed)
        (_, (non_trainable, losses)), grads = grad_fn(trainable, non_trainable, batch)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        metrics = jnp.stack([losses[k].astype(jnp.float32) for k in METRIC_KEYS])
        return (trainable, non_trainable, opt_vars), metrics

    def train_call(state, batches, steps):
        state, metrics = jax.lax.scan(one_step, state, (batches, steps))
        return state, metrics[-1]

    return jax.jit(train_call, donate_argnums=0)


def make_eval_call(pretrainer):
    """A jitted `(trainable, non_trainable, batch) -> terms`, dropout off.

    `batch`: a feature dict `[b, ...]` (the records' own masks; no masker).
    Returns `pretraining_loss_terms`: a dict of float32 `[b]` arrays.
    """
    import jax

    from model.bert_pretrainer import pretraining_loss_terms

    def eval_call(trainable, non_trainable, batch):
        outputs, _ = pretrainer.stateless_call(
            trainable, non_trainable, {k: batch[k] for k in INPUT_KEYS}, training=False
        )
        return pretraining_loss_terms(batch, outputs)

    return jax.jit(eval_call)


def replicate_batch(batch, distribution):
    """A host batch (`{key: [b, ...]}`, the same on every process) on the
    devices: whole on each one under a distribution (evaluation batches
    are small; every device computes the same terms), else a device put."""
    import jax

    if distribution is None:
        return jax.device_put(batch)
    from jax.sharding import NamedSharding, PartitionSpec

    sharding = NamedSharding(distribution.device_mesh.backend_mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {
        k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()
    }


def to_host(array):
    """numpy copy of a (replicated) device array, on any process."""
    if getattr(array, "is_fully_addressable", True):
        return np.asarray(array)
    return np.asarray(array.addressable_data(0))


def initial_state(pretrainer, optimizer):
    """(trainable, non_trainable, optimizer) variable values, as lists."""
    return (
        [v.value for v in pretrainer.trainable_variables],
        [v.value for v in pretrainer.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )


def assign_state(pretrainer, optimizer, state):
    """Writes a state tuple back into the Keras variables."""
    trainable, non_trainable, opt_vars = state
    for variables, values in (
        (pretrainer.trainable_variables, trainable),
        (pretrainer.non_trainable_variables, non_trainable),
        (optimizer.variables, opt_vars),
    ):
        for variable, value in zip(variables, values):
            variable.assign(value)


def _read_npz(path):
    """Every array of an `.npz` file, read (and CRC-checked) now."""
    with np.load(io.BytesIO(fileio.read_bytes(path))) as arrays:
        return {name: arrays[name] for name in arrays.files}


class CheckpointFiles:
    """`model_dir/checkpoints/ckpt-<step>.npz`: every model and optimizer
    variable by path, plus the step; the newest `keep` are kept.

    Only process 0 writes (variables are replicated, so its copy is whole).
    A file appears under its final name only when complete (temporary name,
    then rename), so `restore()` never meets a cut checkpoint.
    """

    PATTERN = re.compile(r"^ckpt-(\d+)\.npz$")

    def __init__(self, model_dir, *, model, optimizer, keep, is_chief=True):
        from model.training import CHECKPOINT_SUBDIR

        self.directory = fileio.join(model_dir, CHECKPOINT_SUBDIR)
        self.model = model
        self.optimizer = optimizer
        self.keep = keep
        self.is_chief = is_chief

    def _variables(self):
        """(name, variable) in the order of `initial_state`'s lists."""
        named = [("model/" + v.path, v) for v in self.model.trainable_variables]
        named += [("model/" + v.path, v) for v in self.model.non_trainable_variables]
        named += [("optimizer/" + v.path, v) for v in self.optimizer.variables]
        return named

    def _steps(self):
        if not fileio.isdir(self.directory):
            return []
        found = (self.PATTERN.match(n) for n in fileio.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m)

    def restore(self):
        """Loads the newest intact checkpoint; returns (step, path) or (0, None).

        A damaged newest file (cut short, not a zip, a bad member) is named
        in one line and the next older one is tried; when none can be read,
        `CheckpointError` refuses to start over the run's history.
        """
        from model.training import restore_newest_intact

        paths = [
            fileio.join(self.directory, f"ckpt-{step}.npz")
            for step in reversed(self._steps())
        ]
        path, arrays, _ = restore_newest_intact(
            paths,
            _read_npz,
            (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile),
            self.directory,
        )
        if path is None:
            return 0, None
        return self._assign(path, arrays), path

    def _assign(self, path, arrays):
        named = self._variables()
        missing = [n for n, _ in named if n not in arrays]
        if missing:
            raise ValueError(
                f"{path} does not match this model: no {missing[0]} "
                f"(and {len(missing) - 1} more)"
            )
        for name, variable in named:
            value = arrays[name]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{path}: {name} has shape {value.shape}, the model "
                    f"{tuple(variable.shape)}"
                )
            variable.assign(value)
        return int(arrays["step"])

    def save(self, step, state):
        """Writes `state` (as from `initial_state`) as the step's checkpoint.

        Values are copied to the host here: the state's device buffers are
        donated to the next train call, so nothing may keep them.
        """
        if not self.is_chief:
            return None
        values = [v for part in state for v in part]
        arrays = {
            name: np.asarray(value)
            for (name, _), value in zip(self._variables(), values)
        }
        arrays["step"] = np.asarray(step, np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = fileio.join(self.directory, f"ckpt-{step}.npz")
        fileio.write_atomic(path, buffer.getvalue())
        for old in self._steps()[: -self.keep] if self.keep > 0 else []:
            fileio.remove(fileio.join(self.directory, f"ckpt-{old}.npz"))
        return path
