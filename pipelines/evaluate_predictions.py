"""Evaluation of predictions against the rows' labels: a confusion matrix
combined across workers -> `configs.metrics.classification_metrics`, and
its picture.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from configs.metrics import classification_metrics

# === Counters (namespace = the transform's class name) ===
EVAL_NAMESPACE = "EvaluatePredictions"
ROWS_EVALUATED = "rows-evaluated"
ROWS_UNKNOWN_LABEL = "rows-with-unknown-label"
_UNKNOWN_EXAMPLES = 20  # rows with an unknown label quoted in metrics.json


# === Evaluation ===
class _ConfusionMatrixFn(beam.CombineFn):
    """(true_id | None, label, predicted_id, text) -> confusion counts.

    Accumulator: `(matrix, unknown, examples)`: `matrix[true][predicted]`
    row counts, `unknown` {label value: rows} for labels the model does not
    know, `examples` up to `_UNKNOWN_EXAMPLES` such rows (the first by
    text, so the result does not depend on how the runner merges).
    """

    def __init__(self, num_labels: int):
        self._n = num_labels

    def create_accumulator(self):
        return [[0] * self._n for _ in range(self._n)], {}, []

    def add_input(self, accumulator, element):
        matrix, unknown, examples = accumulator
        true_id, label, predicted, text = element
        if true_id is None:
            unknown[label] = unknown.get(label, 0) + 1
            examples.append({"label": label, "text": text})
            if len(examples) > 2 * _UNKNOWN_EXAMPLES:
                examples[:] = _first_examples(examples)
        else:
            matrix[true_id][predicted] += 1
        return accumulator

    def merge_accumulators(self, accumulators):
        matrix, unknown, examples = self.create_accumulator()
        for m, u, e in accumulators:
            for i in range(self._n):
                for j in range(self._n):
                    matrix[i][j] += m[i][j]
            for label, count in u.items():
                unknown[label] = unknown.get(label, 0) + count
            examples.extend(e)
        return matrix, unknown, _first_examples(examples)

    def extract_output(self, accumulator):
        matrix, unknown, examples = accumulator
        return matrix, dict(sorted(unknown.items())), _first_examples(examples)


def _first_examples(examples):
    return sorted(examples, key=lambda e: (e["text"], e["label"]))[:_UNKNOWN_EXAMPLES]


class EvaluatePredictions(beam.PTransform):
    """Evaluation metrics of labelled predictions, at any size (a combiner).

    Input: `(true_id | None, label: str, predicted_id: int, text: str)`.
    Output: one dict: `classification_metrics` plus `unknown_labels`
    ({label value: rows}), `rows_with_unknown_label` and
    `unknown_label_examples` (a few such rows).
    """

    def __init__(self, *, labels, label_names=()):
        super().__init__()
        self._labels = list(labels)
        self._names = list(label_names)

    def expand(self, pairs):
        labels, names = self._labels, self._names

        def to_metrics(combined):
            matrix, unknown, examples = combined
            metrics = classification_metrics(matrix, labels, names)
            metrics["rows_with_unknown_label"] = sum(unknown.values())
            metrics["unknown_labels"] = unknown
            metrics["unknown_label_examples"] = examples
            return metrics

        return (
            pairs
            | "CountEvaluated" >> beam.Map(_count_evaluated)
            | "ConfusionMatrix" >> beam.CombineGlobally(_ConfusionMatrixFn(len(labels)))
            | "Metrics" >> beam.Map(to_metrics)
        )


def _count_evaluated(element):
    name = ROWS_UNKNOWN_LABEL if element[0] is None else ROWS_EVALUATED
    Metrics.counter(EVAL_NAMESPACE, name).inc()
    return element


def confusion_matrix_png(metrics: dict) -> bytes:
    """`metrics["confusion_matrix"]` drawn as PNG bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(metrics["confusion_matrix"])
    names = [metrics["per_class"][v]["name"] for v in metrics["labels"]]
    size = 2.5 + 0.6 * len(names)
    fig = Figure(figsize=(size + 1, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"(n={metrics['count']})",
        fontsize=9,
    )
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                str(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
