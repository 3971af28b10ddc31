"""The Keras callbacks of `model.finetune`: per-epoch evaluation, progress.

Their own module so that `model.finetune` imports Keras (and with it
TensorFlow) only when it trains, not for `--help` or a flag error.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from configs.metrics import accuracy_and_macro_f1


class EvaluateEachEpoch(keras.callbacks.Callback):
    """Accuracy + macro-F1 on eval after every epoch; keeps the best weights.

    Args:
        eval_batches: tf.data of `(features, label_id)` batches.
        eval_labels: int array `[num_eval]`, the labels in batch order.
        num_classes: int.
        weights_path: where the best epoch's weights go.
        log: the run's metrics log (`write(dict)`).
    """

    def __init__(self, eval_batches, eval_labels, num_classes, weights_path, log):
        super().__init__()
        self._batches = eval_batches
        self._labels = eval_labels
        self._num_classes = num_classes
        self._weights_path = weights_path
        self._log = log
        self.history = []
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        # predict_on_batch: no iterator warnings for a finite dataset.
        logits = np.concatenate(
            [self.model.predict_on_batch(x) for x, _ in self._batches]
        )
        metrics = accuracy_and_macro_f1(
            self._labels, np.argmax(logits, axis=-1), self._num_classes
        )
        metrics.update(epoch=epoch + 1, train_loss=float((logs or {}).get("loss", 0)))
        self.history.append(metrics)
        improved = self.best is None or metrics["accuracy"] > self.best["accuracy"]
        if improved:
            self.best = dict(metrics)
            # Under a temporary name, then renamed: a run killed while
            # saving leaves the previous best whole.
            from model import training

            training.save_weights_atomic(self.model, self._weights_path)
        self._log.write({"kind": "eval", **metrics})
        print(
            f"  epoch {epoch + 1}: train loss {metrics['train_loss']:.4f}, "
            f"eval accuracy {metrics['accuracy']:.4f}, "
            f"macro-F1 {metrics['macro_f1']:.4f}"
            + (" (best so far, saved)" if improved else ""),
            flush=True,
        )


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops at the first non-finite loss, before the epoch's evaluation
    could save the NaN weights as the best (`training.check_finite`).
    SIGINT/SIGTERM received meanwhile stop here too, between steps."""

    def __init__(self, signals=None):
        super().__init__()
        self._signals = signals
        self.step = 0
        self._last = None

    def on_train_batch_end(self, batch, logs=None):
        from model import training

        self.step += 1
        loss = float((logs or {}).get("loss", 0.0))
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        training.check_finite(loss, self.step, self._last, lr)
        self._last = (self.step, loss)
        if self._signals is not None:
            self._signals.raise_if_received()


class Progress(keras.callbacks.Callback):
    """One line every `log_every` steps: loss, learning rate, speed."""

    def __init__(self, log, log_every, quiet):
        super().__init__()
        self._log = log
        self._log_every = log_every
        self._quiet = quiet
        self.step = 0
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self._quiet or self.step % self._log_every:
            return
        logs = logs or {}
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        elapsed = time.time() - self.start
        print(
            f"  step {self.step}: loss {logs.get('loss', 0):.4f}, "
            f"lr {lr:.2e}, {self.step / max(elapsed, 1e-9):.1f} steps/s",
            flush=True,
        )
        self._log.write(
            {
                "kind": "train",
                "step": self.step,
                "loss": logs.get("loss"),
                "elapsed_s": round(elapsed, 3),
            }
        )
