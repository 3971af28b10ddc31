"""Scoring keyed texts through RunInference, and the JSON line of each result."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipelines.saved_model_handler import SavedModelTextHandler

# The fields we add to each row; an input field of the same name is kept
# as `input_<name>`.
OUTPUT_FIELDS = ("label", "label_name", "label_value", "probabilities")

# Counters of the scoring step (namespace = the transform's class name).
SCORE_NAMESPACE = "ScoreTexts"
ROWS_PREDICTED = "rows-predicted"
TEXTS_TRUNCATED = "texts-truncated"
TEXTS_WINDOWED = "texts-scored-as-windows"
WINDOWS_SCORED = "windows-scored"


# === Predictions ===
class _FormatPredictionFn(beam.DoFn):
    """((fields, label), PredictionResult) -> one JSON line.

    With `evaluate`, also `(true_id | None, label, predicted_id, text)` to
    the `eval` output (`true_id` None: a label the model does not know).
    """

    def __init__(self, *, labels, label_names, evaluate):
        self._labels = list(labels)
        self._names = list(label_names)
        self._evaluate = evaluate
        # A row's label matches a label value, else a label name.
        self._ids = {name: i for i, name in enumerate(self._names)}
        self._ids.update({value: i for i, value in enumerate(self._labels)})
        self._predicted = Metrics.counter(SCORE_NAMESPACE, ROWS_PREDICTED)
        self._truncated = Metrics.counter(SCORE_NAMESPACE, TEXTS_TRUNCATED)
        self._windowed = Metrics.counter(SCORE_NAMESPACE, TEXTS_WINDOWED)
        self._windows = Metrics.counter(SCORE_NAMESPACE, WINDOWS_SCORED)

    def process(self, element):
        (fields, label), result = element
        scores = result.inference
        probabilities = scores["probabilities"]
        predicted = int(probabilities.argmax())
        self._predicted.inc()
        if scores["truncated"]:
            self._truncated.inc()
        if scores["windows"] > 1:
            self._windowed.inc()
            self._windows.inc(scores["windows"])
        yield json.dumps(
            format_prediction(
                fields, predicted, probabilities, self._labels, self._names
            ),
            ensure_ascii=False,
        )
        if self._evaluate:
            yield beam.pvalue.TaggedOutput(
                "eval", (self._ids.get(label), label, predicted, result.example)
            )


def format_prediction(fields, predicted, probabilities, labels, label_names):
    """The output object of one row: its fields, then the prediction.

    Args:
        fields: dict, the row's fields in file order.
        predicted: int, the class id.
        probabilities: sequence of float, one per class.
        labels, label_names: the model's label values and names (names may
            be empty).

    Returns:
        dict: `fields` (one named like an output field is renamed
        `input_<name>`), `label`, `label_name` (None without names),
        `label_value`, `probabilities` (rounded to 6 decimals).
    """
    out = {(f"input_{k}" if k in OUTPUT_FIELDS else k): v for k, v in fields.items()}
    out["label"] = predicted
    out["label_name"] = label_names[predicted] if predicted < len(label_names) else None
    out["label_value"] = labels[predicted] if predicted < len(labels) else None
    out["probabilities"] = [round(float(p), 6) for p in probabilities]
    return out


class ScoreTexts(beam.PTransform):
    """Scores keyed texts with a SavedModel through RunInference.

    Input: `(key, text: str)`. Output: `(key, PredictionResult)` (see
    `SavedModelTextHandler`).
    """

    def __init__(self, handler: SavedModelTextHandler):
        super().__init__()
        self._handler = handler

    def expand(self, keyed_texts):
        return keyed_texts | "RunInference" >> RunInference(
            KeyedModelHandler(self._handler)
        )


class FormatPredictions(beam.PTransform):
    """Turns scored rows into JSON lines (and evaluation tuples).

    Input: `((fields, label), PredictionResult)`. Output: a tagged result
    with `lines` (one JSON object per row, str) and `eval`
    (`(true_id | None, label, predicted_id, text)`, only with `evaluate`).
    """

    def __init__(self, *, labels, label_names, evaluate: bool):
        super().__init__()
        self._fn = _FormatPredictionFn(
            labels=labels, label_names=label_names, evaluate=evaluate
        )

    def expand(self, scored):
        return scored | "Format" >> beam.ParDo(self._fn).with_outputs(
            "eval", main="lines"
        )
