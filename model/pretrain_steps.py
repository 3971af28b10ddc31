"""The backends of `model.pretrain`: the compiled step and its state.

`TensorFlowSteps` (`tf.distribute`, a `tf.function` step under
`strategy.run`, `tf.train.CheckpointManager`, tf.data) and `JaxSteps`
(`keras.distribution`, one jitted `lax.scan` call of `k` steps, `.npz`
checkpoints, the TF-free numpy reader; imports no TensorFlow) offer the
same methods to `model.pretrain.train`'s loop: `restore`, `reload_state`,
`reschedule`, `start_input`, `run`, `wait`, `metrics`, `learning_rate`,
`save`, `finish`. Everything is imported lazily: importing this module
imports neither TensorFlow nor Keras.
"""

import dataclasses

from model import training
from model.pretrain_budget import schedule


class TensorFlowSteps:
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
        wanted = p.precision
        if wanted == "auto" and device_kind() == "cpu" and training._cpu_has_bf16():
            from model import precision_probe

            # One process decides alone: multi-worker processes would each
            # time their own host and could choose differently.
            if precision_probe.enabled() and p.strategy != "multi_worker":
                # bf16 pays on some bf16-capable CPUs and shapes, not all.
                wanted, note = precision_probe.choose(
                    cfg, p.batch_size // max(1, self.replicas)
                )
                if self.chief:
                    print(note, flush=True)
        precision, self.jit = training.choose_fast_path(
            wanted,
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
        check_divisible(p.batch_size, self.replicas, "replicas")
        keras.utils.set_random_seed(p.seed)
        with self.strategy.scope():
            # Clipping happens in `training.apply_gradients`, after the sum.
            self.backbone, self.pretrainer, self.optimizer = build(cfg, precision)
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
        self.eval_step = None

    def restore(self):
        return self.state.restore()

    def reload_state(self):
        pass  # variables were loaded in place

    def reschedule(self, total_steps, warmup_steps):
        """Sets the schedule and (re)builds the compiled loop for it."""
        self.schedule = schedule(self.cfg.pretrain, total_steps, warmup_steps)
        self.inner.learning_rate = self.schedule
        self.train_loop = self._build_loop()

    def start_input(self, start_step):
        import tensorflow as tf

        from model import data as data_lib

        cfg, p = self.cfg, self.cfg.pretrain
        masker = masker_of(cfg, self.vocab)

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

    def eval_terms(self, batch):
        """Per-example loss terms of a host batch, dropout off (numpy `[b]`).

        Every replica gets the whole batch (`strategy.run` of a plain
        tensor) and computes the same terms; the first replica's are read.
        """
        import numpy as np
        import tensorflow as tf

        if self.eval_step is None:
            self.eval_step = self._build_eval_step()
        out = self.eval_step({k: tf.constant(v) for k, v in batch.items()})
        local = self.strategy.experimental_local_results
        return {k: np.asarray(local(v)[0]) for k, v in out.items()}

    def _build_eval_step(self):
        import tensorflow as tf

        from model.bert_pretrainer import INPUT_KEYS, pretraining_loss_terms

        pretrainer, strategy = self.pretrainer, self.strategy

        def replica_eval(batch):
            outputs = pretrainer({k: batch[k] for k in INPUT_KEYS}, training=False)
            return pretraining_loss_terms(batch, outputs)

        if self.jit:
            replica_eval = tf.function(replica_eval, jit_compile=True)

        @tf.function
        def eval_step(batch):
            return strategy.run(replica_eval, args=(batch,))

        return eval_step

    def save(self, step):
        self.state.save(step)

    def finish(self):
        pass


class JaxSteps:
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
        check_divisible(p.batch_size, self.process_count, "processes")
        replicas = (
            self.distribution.device_mesh.devices.size if self.distribution else 1
        )
        check_divisible(p.batch_size, replicas, "devices")
        keras.utils.set_random_seed(p.seed)
        if self.distribution is not None:
            keras.distribution.set_distribution(self.distribution)
        # The step computes global gradients: the optimizer clips them.
        self.backbone, self.pretrainer, self.optimizer = build(
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
        self.masker = masker_of(cfg, vocab)
        self.state = None
        self.eval_call = None

    def restore(self):
        step, path = self.checkpoints.restore()
        self.reload_state()
        return step, path

    def reload_state(self):
        self.state = self.jt.initial_state(self.pretrainer, self.optimizer)

    def reschedule(self, total_steps, warmup_steps):
        self.schedule = schedule(self.cfg.pretrain, total_steps, warmup_steps)
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

    def eval_terms(self, batch):
        """Per-example loss terms of a host batch, dropout off (numpy `[b]`),
        from the current state (every process runs it: one SPMD call)."""
        if self.eval_call is None:
            self.eval_call = self.jt.make_eval_call(self.pretrainer)
        trainable, non_trainable, _ = self.state
        batch = self.jt.replicate_batch(batch, self.distribution)
        out = self.eval_call(trainable, non_trainable, batch)
        return {k: self.jt.to_host(v) for k, v in out.items()}

    def save(self, step):
        self.checkpoints.save(step, self.state)

    def finish(self):
        # Final weights back into the Keras variables (for save_weights).
        self.jt.assign_state(self.pretrainer, self.optimizer, self.state)


def build(cfg, precision, global_clipnorm=None):
    """(backbone, pretrainer, optimizer) of `cfg`, in the caller's scope.

    The optimizer's schedule is replaced by `reschedule` (a budget run
    sizes it only after timing steps). The encoder's dropout is
    `pretrain.dropout` when that is >= 0 (the budget recipe's 0.0), else
    `model.dropout`; only the latter is recorded as the model's, so
    fine-tuning from the run keeps its dropout.
    """
    from model.bert_backbone import BertBackbone
    from model.bert_pretrainer import BertPretrainer

    from model.optimization import create_optimizer

    p = cfg.pretrain
    model = cfg.model
    if p.dropout >= 0:  # pretraining's own; config.yaml keeps model.dropout
        model = dataclasses.replace(model, dropout=p.dropout)
    backbone = BertBackbone.from_model_config(model, dtype=precision)
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


def check_divisible(batch_size, parts, what):
    if batch_size % parts:
        raise SystemExit(
            f"error: batch_size {batch_size} is not divisible by {parts} {what}"
        )


def masker_of(cfg, vocab):
    if cfg.pretrain.masking != "dynamic":
        return None
    from model.masking import DynamicMasker
    from model.pretrain_checks import masking_data

    # The trainer's own rate and slots (pretrain.masking_rate, ...) if set.
    return DynamicMasker.from_config(vocab, masking_data(cfg))
