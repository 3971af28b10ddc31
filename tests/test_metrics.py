"""configs.metrics: the one definition of accuracy and macro-F1 that
fine-tuning and batch inference both report."""

import numpy as np
import pytest

from configs import metrics


def _reference(true, predicted, num_classes):
    """Macro-F1 from its textbook form, 2tp / (2tp + fp + fn), over the
    classes present in either array."""
    f1s = []
    for c in range(num_classes):
        tp = np.sum((predicted == c) & (true == c))
        fp = np.sum((predicted == c) & (true != c))
        fn = np.sum((predicted != c) & (true == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(predicted == true)), float(np.mean(f1s))


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_matrix_metrics_match_the_textbook_form(num_classes):
    rng = np.random.default_rng(num_classes)
    true = rng.integers(0, num_classes, 200)
    # Predictions never use the last classes sometimes: absent classes.
    predicted = np.where(rng.random(200) < 0.6, true, rng.integers(0, 2, 200))
    m = metrics.confusion_matrix(true, predicted, num_classes)
    assert m.sum() == 200 and m.trace() == np.sum(true == predicted)
    got = metrics.classification_metrics(m, [str(i) for i in range(num_classes)])
    accuracy, macro_f1 = _reference(true, predicted, num_classes)
    assert got["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert got["macro_f1"] == pytest.approx(macro_f1, abs=1e-12)
    assert sum(c["support"] for c in got["per_class"].values()) == 200
    # Fine-tuning's evaluation (model/finetune_callbacks.py) reports these.
    ft = metrics.accuracy_and_macro_f1(true, predicted, num_classes)
    assert ft == {"accuracy": got["accuracy"], "macro_f1": got["macro_f1"]}


def test_a_class_seen_nowhere_does_not_count():
    m = metrics.classification_metrics([[2, 0, 0], [1, 1, 0], [0, 0, 0]], list("abc"))
    assert m["macro_f1"] == pytest.approx(np.mean([2 * 2 / 5, 2 * 1 / 3]))
    assert m["per_class"]["c"]["support"] == 0
