"""Classification metrics, one definition for fine-tuning's evaluation and
the batch-inference job (plain numpy, no TensorFlow, no Beam)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """int64 `[num_classes, num_classes]` counts, `m[true][predicted]`."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    return m


def classification_metrics(matrix, labels, label_names=()) -> dict:
    """Metrics of a confusion matrix (`matrix[true][predicted]` counts).

    Accuracy; per class precision, recall, F1 and support (0 where
    undefined); macro-F1 = the mean F1 over the classes present in the
    labels or the predictions (a class never seen on either side does not
    pull the mean down).
    """
    m = np.asarray(matrix, dtype=np.int64).reshape(len(labels), len(labels))
    total = int(m.sum())
    tp = np.diag(m)
    support, predicted = m.sum(axis=1), m.sum(axis=0)
    per_class, f1s = {}, []
    for i, value in enumerate(labels):
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        recall = tp[i] / support[i] if support[i] else 0.0
        denominator = support[i] + predicted[i]
        f1 = 2 * tp[i] / denominator if denominator else 0.0
        if denominator:
            f1s.append(f1)
        per_class[value] = {
            "name": label_names[i] if i < len(label_names) else value,
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support[i]),
        }
    return {
        "count": total,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": m.tolist(),
    }


def accuracy_and_macro_f1(labels, predictions, num_classes: int) -> dict:
    """Accuracy and macro-F1 (mean over classes present in either array) of
    int label ids, as `classification_metrics` defines them."""
    m = confusion_matrix(labels, predictions, num_classes)
    full = classification_metrics(m, list(range(num_classes)))
    return {"accuracy": full["accuracy"], "macro_f1": full["macro_f1"]}
