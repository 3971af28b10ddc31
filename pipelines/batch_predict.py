"""Score texts with an exported SavedModel (Beam RunInference); evaluate them.

    python -m pipelines.batch_predict --saved_model=out/sst2_serving \\
        --input='reviews/*.tsv' --output_dir=out/scored \\
        [--text_column=sentence] [--label_column=label] \\
        [--long_text=truncate|average] [--compression=gzip] [--overwrite] \\
        [Beam flags: --runner=DataflowRunner --project=... --region=... \\
         --temp_location=gs://... --setup_file=./setup.py]

The chain:

    ReadRows             (file, bytes line)           ReadAllFromText
    ParseRows            ((fields, label), text)      configs.labelled_text
    ScoreTexts           ((fields, label), PredictionResult)
                         RunInference + SavedModelTextHandler
    FormatPredictions    JSON lines -> predictions-SSSSS-of-NNNNN.jsonl[.gz]
    EvaluatePredictions  (with --label_column) confusion matrix -> metrics.json

Input: the rows `pipelines.classification_data` reads (TSV with quoting
off, CSV, JSON Lines; TSV/CSV with a header), and plain text (any other
name: each line is one text), local or remote, globs, `.gz`. The text is
`--text_column` (default `sentence` for TSV/CSV, `text` otherwise).

Output, in `--output_dir`:
  * `predictions-*.jsonl`: one JSON object per scored row, the row's own
    fields first (in file order; a field named like one of ours becomes
    `input_<name>`), then `label` (class id), `label_name`, `label_value`
    and `probabilities` (softmax, 6 decimals), as `model.predict` prints;
  * `dead_letter.jsonl`: one `{"reason", "file", "line"}` per bad row;
  * with `--label_column` (a row's label is matched to the model's label
    values, else to its label names; rows without one are dead letters):
    `metrics.json` (count, accuracy, macro-F1, per-class precision/recall/
    F1, the confusion matrix, the label values the model does not know)
    and `confusion_matrix.png`;
  * `summary.json`, written last: the run's counts. A directory with our
    shards but no `summary.json` is an interrupted run.

Only the SavedModel, TensorFlow and tensorflow-text are needed: Beam's own
TensorFlow handler loads models through `tf.keras.models.load_model`, which
refuses SavedModels under Keras 3 (and needs `tensorflow_hub`), so
`SavedModelTextHandler` loads with `tf.saved_model.load` and calls the
`serving_default` signature on batches of raw strings.

Nothing is silently lost: rows read = predictions + dead letters + blank
lines, each a Beam counter, all printed at the end. Texts longer than the
model's `max_seq_length` are truncated (and counted), or with
`--long_text=average` scored as overlapping windows whose probabilities
are averaged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)
from apache_beam.options.pipeline_options import TestOptions

from configs import labelled_text
from configs.metrics import classification_metrics
from configs.schema import ConfigError
from pipelines import corpus, options
from pipelines.classification_data import read_header

# === Files (in --output_dir) ===
PREDICTIONS_PREFIX = "predictions"
DEAD_LETTER_FILE = "dead_letter.jsonl"
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
SUMMARY_FILE = "summary.json"  # written last: the run is complete
_OUR_FILES = (DEAD_LETTER_FILE, METRICS_FILE, CONFUSION_PNG, SUMMARY_FILE)

# === What a `model.export` SavedModel looks like ===
SERVING_SIGNATURE = "serving_default"
TEXT_INPUT = "text"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
LABELS_FILE = "assets.extra/labels.json"
VOCAB_FILE = "assets.extra/vocab.txt"

# The fields we add to each row; an input field of the same name is kept
# as `input_<name>`.
OUTPUT_FIELDS = ("label", "label_name", "label_value", "probabilities")
LONG_TEXT_MODES = ("truncate", "average")
COMPRESSIONS = ("none", "gzip")
# RunInference batch sizes. The SavedModel pads every row to max_seq_length,
# so only the row count matters. bert_tiny (seq 64) on 2 CPU cores,
# serving_default in a tight loop, is fastest at 256 rows when the machine
# is quiet (1,950/s vs 1,713 at 128) and at 64 under load (1,060 vs 884 at
# 256); the job ran the same within 3% at 32..128 (BatchElements adapts),
# 32..256 and a fixed 64. benchmarks/batch_predict.py measures it.
DEFAULT_MIN_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_SIZE = 128
DEFAULT_MAX_LINE_BYTES = corpus.DEFAULT_MAX_LINE_BYTES  # 1 MiB
# --long_text=average: windows of max_seq_length - 2 wordpieces, each
# starting half a window after the one before.
WINDOW_STRIDE_FRACTION = 0.5

# === Counters (namespace = the transform's class name) ===
PARSE_NAMESPACE = "ParseRows"
ROWS_READ = "rows-read"
ROWS_BLANK = "rows-skipped-blank"
BAD_TOO_LONG = "line-too-long"
BAD_REASONS = tuple(
    r for r in labelled_text.BAD_REASONS if r != labelled_text.BAD_UNKNOWN_LABEL
) + (BAD_TOO_LONG,)
SCORE_NAMESPACE = "ScoreTexts"
ROWS_PREDICTED = "rows-predicted"
TEXTS_TRUNCATED = "texts-truncated"
TEXTS_WINDOWED = "texts-scored-as-windows"
WINDOWS_SCORED = "windows-scored"
EVAL_NAMESPACE = "EvaluatePredictions"
ROWS_EVALUATED = "rows-evaluated"
ROWS_UNKNOWN_LABEL = "rows-with-unknown-label"
NAMESPACES = (PARSE_NAMESPACE, SCORE_NAMESPACE, EVAL_NAMESPACE)
_UNKNOWN_EXAMPLES = 20  # rows with an unknown label quoted in metrics.json


# === The SavedModel ===
@dataclasses.dataclass(frozen=True)
class SavedModelInfo:
    """What the job needs to know about a `model.export` SavedModel."""

    path: str
    labels: tuple  # label values in id order (label id i = labels[i])
    label_names: tuple  # human names, one per label, or ()
    max_seq_length: int  # the export truncates to this many wordpieces
    do_lower_case: bool


def read_saved_model_info(path: str) -> SavedModelInfo:
    """Checks that `path` is a `model.export` SavedModel; returns its info.

    Reads `saved_model.pb` (the signature: `serving_default` taking one
    string tensor `text` and returning `label` and `probabilities`) and
    `assets.extra/labels.json`; loads no weights.

    Raises:
        options.UsageError: one line saying what is missing.
    """
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    pb = FileSystems.join(path, "saved_model.pb")
    if not FileSystems.exists(pb):
        raise options.UsageError(
            f"--saved_model {path} is not a SavedModel (no saved_model.pb)"
        )
    proto = saved_model_pb2.SavedModel()
    try:
        with FileSystems.open(pb, compression_type="uncompressed") as f:
            proto.ParseFromString(f.read())
    except Exception as e:  # DecodeError for a damaged file, I/O errors
        raise options.UsageError(f"{pb} cannot be read ({e})") from None
    signatures = proto.meta_graphs[0].signature_def if proto.meta_graphs else {}
    signature = signatures.get(SERVING_SIGNATURE)
    inputs = dict(signature.inputs) if signature is not None else {}
    if (
        signature is None
        or set(inputs) != {TEXT_INPUT}
        or inputs[TEXT_INPUT].dtype != types_pb2.DT_STRING
        or not {LABEL_OUTPUT, PROBABILITIES_OUTPUT} <= set(signature.outputs)
    ):
        raise options.UsageError(
            f"--saved_model {path} is not a model.export SavedModel: it needs a "
            f"{SERVING_SIGNATURE} signature taking one string tensor "
            f"'{TEXT_INPUT}' and returning '{LABEL_OUTPUT}' and "
            f"'{PROBABILITIES_OUTPUT}' (it has: "
            f"{', '.join(sorted(signatures)) or 'no signatures'})"
        )
    for name in (LABELS_FILE, VOCAB_FILE):
        if not FileSystems.exists(FileSystems.join(path, name)):
            raise options.UsageError(
                f"--saved_model {path} has no {name} (export it with model.export)"
            )
    labels_path = FileSystems.join(path, LABELS_FILE)
    try:
        with FileSystems.open(labels_path, compression_type="uncompressed") as f:
            info = json.loads(f.read().decode("utf-8"))
        labels = tuple(str(v) for v in info["labels"])
        max_seq_length = int(info["max_seq_length"])
    except (ValueError, KeyError, TypeError) as e:
        raise options.UsageError(f"{labels_path} is damaged ({e!r})") from None
    if not labels:
        raise options.UsageError(f"{labels_path} lists no labels")
    return SavedModelInfo(
        path=path,
        labels=labels,
        label_names=tuple(info.get("label_names", ())),
        max_seq_length=max_seq_length,
        do_lower_case=bool(info.get("do_lower_case", True)),
    )


def window_spans(
    word_starts: list, max_pieces: int, stride: int
) -> list[tuple[int, int]]:
    """Cuts a text of `len(word_starts)` wordpieces into overlapping windows.

    Args:
        word_starts: list[bool], one per wordpiece: True where a word
            begins (the piece is not a `##` continuation).
        max_pieces: int >= 1, the most wordpieces in a window.
        stride: int >= 1, wordpieces from one window's start to the next
            (moved forward to the next word start).

    Returns:
        `[start, end)` wordpiece ranges, in order, covering every piece;
        each at most `max_pieces` long, starting at a word start and ending
        before one (a word longer than a window is cut inside). One range
        when the text fits.
    """
    n = len(word_starts)
    if n <= max_pieces:
        return [(0, n)]
    spans = []
    start = 0
    while True:
        end = min(start + max_pieces, n)
        if end < n:  # end at a word boundary when one is inside the window
            cut = end
            while cut > start and not word_starts[cut]:
                cut -= 1
            end = cut if cut > start else end
        spans.append((start, end))
        if end >= n:
            return spans
        following = min(start + stride, end)
        while following < end and not word_starts[following]:
            following += 1
        start = following if following > start else end


class _LoadedSavedModel:
    """One loaded SavedModel + the tokenizer it was exported with.

    Built once per worker process by `SavedModelTextHandler.load_model`
    (RunInference holds it in a `shared.Shared` handle, so every thread
    of the process uses this one copy; TensorFlow calls are thread-safe).
    """

    def __init__(self, path: str):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 (registers the tokenizer ops)

        from configs import features, tokenization

        self._tf = tf
        self._serve = tf.saved_model.load(path).signatures[SERVING_SIGNATURE]
        with tf.io.gfile.GFile(os.path.join(path, LABELS_FILE)) as f:
            info = json.load(f)
        vocab = features.read_vocab(os.path.join(path, VOCAB_FILE))
        # The export's own tokenizer settings: counts and windows match
        # what the SavedModel does inside.
        self._tokenizer = tokenization.build_tokenizer(
            vocab, bool(info.get("do_lower_case", True))
        )
        self._word_start = np.array(
            [not t.startswith(tokenization.SUFFIX_INDICATOR) for t in vocab]
        )
        self.max_pieces = int(info["max_seq_length"]) - 2  # [CLS] ... [SEP]

    def serve(self, texts: list[str], chunk: int):
        """float32 `[len(texts), num_labels]` probabilities, `chunk` rows a call."""
        tf = self._tf
        parts = [
            self._serve(**{TEXT_INPUT: tf.constant(texts[i : i + chunk])})[
                PROBABILITIES_OUTPUT
            ].numpy()
            for i in range(0, len(texts), chunk)
        ]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def lengths(self, texts: list[str]):
        """int64 `[len(texts)]`: wordpieces of each text (no specials)."""
        return self._tokenizer.tokenize(self._tf.constant(texts)).row_lengths().numpy()

    def windows(self, texts: list[str], stride: int) -> list[list[str]]:
        """Each text cut into windows (`window_spans`), as substrings.

        One tokenizer call for all texts: per text, the eager ragged ops
        cost ~30 ms, more than scoring its windows.
        """
        ids, starts, ends = self._tokenizer.tokenize_with_offsets(
            self._tf.constant(texts)
        )
        splits = ids.row_splits.numpy()
        ids, starts, ends = (t.flat_values.numpy() for t in (ids, starts, ends))
        word_start = self._word_start[ids]
        result = []
        for i, text in enumerate(texts):
            lo, hi = splits[i], splits[i + 1]
            raw = text.encode("utf-8")
            spans = window_spans(word_start[lo:hi].tolist(), self.max_pieces, stride)
            result.append(
                [
                    raw[starts[lo + a] : ends[lo + b - 1]].decode(
                        "utf-8", errors="replace"
                    )
                    for a, b in spans
                ]
            )
        return result


class SavedModelTextHandler(ModelHandler):
    """RunInference handler for a `model.export` SavedModel: strings in.

    Example: `str`, one text. Prediction: `PredictionResult` whose
    `inference` is a dict: `probabilities` (float32 numpy `[num_labels]`),
    `truncated` (bool: longer than the model's `max_seq_length` and, with
    `long_text="truncate"`, cut), `windows` (int: model calls averaged;
    1 unless `long_text="average"` and the text is long).

    The model is loaded with `tf.saved_model.load` once per worker process
    and shared by its threads (RunInference's default `shared.Shared`
    handle); each batch is one `serving_default(text=...)` call.
    """

    def __init__(
        self,
        saved_model_dir: str,
        *,
        long_text: str = "truncate",
        min_batch_size: int = DEFAULT_MIN_BATCH_SIZE,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        window_stride_fraction: float = WINDOW_STRIDE_FRACTION,
    ):
        if long_text not in LONG_TEXT_MODES:
            raise ValueError(f"long_text must be one of {LONG_TEXT_MODES}")
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError("need 1 <= min_batch_size <= max_batch_size")
        if not 0 < window_stride_fraction <= 1:
            raise ValueError("window_stride_fraction must be in (0, 1]")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._path = saved_model_dir
        self._long_text = long_text
        self._chunk = max_batch_size
        self._stride_fraction = window_stride_fraction

    def load_model(self) -> _LoadedSavedModel:
        return _LoadedSavedModel(self._path)

    def run_inference(self, batch, model, inference_args=None):
        texts = list(batch)
        is_long = model.lengths(texts) > model.max_pieces
        windows = np.ones(len(texts), dtype=np.int64)
        if self._long_text == "average" and is_long.any():
            # Every window of every long text, and the short texts whole,
            # in as few model calls as the batch size allows.
            stride = max(1, int(model.max_pieces * self._stride_fraction))
            long_rows = np.flatnonzero(is_long)
            cut = dict(
                zip(long_rows, model.windows([texts[i] for i in long_rows], stride))
            )
            flat, owner = [], []
            for i, text in enumerate(texts):
                pieces = cut.get(i, [text])
                windows[i] = len(pieces)
                flat.extend(pieces)
                owner.extend([i] * len(pieces))
            scored = model.serve(flat, self._chunk)
            probabilities = np.zeros((len(texts), scored.shape[1]), np.float32)
            np.add.at(probabilities, owner, scored)
            probabilities /= windows[:, None]
            truncated = np.zeros(len(texts), dtype=bool)
        else:
            probabilities = model.serve(texts, self._chunk)
            truncated = is_long
        return [
            PredictionResult(
                text,
                {
                    "probabilities": probabilities[i],
                    "truncated": bool(truncated[i]),
                    "windows": int(windows[i]),
                },
            )
            for i, text in enumerate(texts)
        ]

    def get_num_bytes(self, batch) -> int:
        return sum(len(t.encode("utf-8")) for t in batch)

    def get_metrics_namespace(self) -> str:
        return "SavedModelTextHandler"


# === Rows ===
def _dead_letter(reason: str, path: str, line: bytes) -> dict:
    return {
        "reason": reason,
        "file": path,
        "line": line.decode("utf-8", errors="backslashreplace"),
    }


class _ParseRowFn(beam.DoFn):
    """(file, bytes line) -> ((fields, label), text); bad rows to `bad`."""

    def __init__(self, *, fmt, columns, text_column, label_column, max_line_bytes):
        self._kwargs = dict(
            fmt=fmt,
            columns=list(columns),
            text_column=text_column,
            label_column=label_column,
        )
        self._max_line_bytes = max_line_bytes
        self._read = Metrics.counter(PARSE_NAMESPACE, ROWS_READ)
        self._blank = Metrics.counter(PARSE_NAMESPACE, ROWS_BLANK)
        self._bad = {r: Metrics.counter(PARSE_NAMESPACE, r) for r in BAD_REASONS}

    def process(self, element):
        path, line = element
        self._read.inc()
        if len(line) > self._max_line_bytes:
            status, value = "bad", BAD_TOO_LONG
        else:
            status, value = labelled_text.parse_record(line, **self._kwargs)
        if status == "blank":
            self._blank.inc()
            return
        if status == "ok":
            fields, text, _, label = value
            if label == "":  # a labelled run needs every row's label
                status, value = "bad", labelled_text.BAD_MISSING_LABEL
            else:
                yield (fields, label), text
                return
        self._bad[value].inc()
        yield beam.pvalue.TaggedOutput("bad", _dead_letter(value, path, line))


class ParseRows(beam.PTransform):
    """Parses raw lines into texts to score, keyed by their row.

    Input: `(file: str, line: bytes)` (no header lines). Output: a dict of
    PCollections: `"rows"`: `((fields: dict, label: str | None), text:
    str)`, ready for a `KeyedModelHandler`; `"bad"`: dead-letter dicts
    (`reason`, `file`, `line`). Blank lines are counted, not passed on.
    """

    def __init__(
        self,
        *,
        fmt: str,
        columns: list[str],
        text_column: str,
        label_column: str = "",
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ):
        super().__init__()
        if fmt not in ("tsv", "csv", "jsonl", labelled_text.TEXT_FORMAT):
            raise ValueError(f"unknown format {fmt!r}")
        if fmt in ("tsv", "csv"):
            for name in filter(None, (text_column, label_column)):
                if name not in columns:
                    raise ConfigError(
                        f"column {name!r} is not in the header "
                        f"(columns: {', '.join(columns)})"
                    )
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._fn = _ParseRowFn(
            fmt=fmt,
            columns=columns,
            text_column=text_column,
            label_column=label_column,
            max_line_bytes=max_line_bytes,
        )

    def expand(self, lines):
        parsed = lines | "Parse" >> beam.ParDo(self._fn).with_outputs(
            "bad", main="rows"
        )
        return {"rows": parsed.rows, "bad": parsed.bad}


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


def plot_confusion_matrix(metrics: dict, path: str) -> str:
    """Draws `metrics["confusion_matrix"]` as a PNG at `path` (any filesystem)."""
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
    _write_atomic(path, buffer.getvalue())
    return path


def _write_atomic(path: str, data: bytes) -> None:
    """Writes via a temporary name + rename (never a half-written file)."""
    temp = f"{path}.tmp-{os.getpid()}"
    with FileSystems.create(temp, compression_type="uncompressed") as f:
        f.write(data)
    FileSystems.rename([temp], [path])


# === Flags ===
@dataclasses.dataclass(frozen=True)
class BatchPredictSettings:
    """Everything the job needs besides Beam's options."""

    model: SavedModelInfo
    input: str  # glob or comma-separated globs
    input_files: tuple  # what they matched, sorted
    fmt: str  # "tsv", "csv", "jsonl" or "text" (all files alike)
    columns: tuple  # TSV/CSV header (the same in every file)
    output_dir: str
    text_column: str
    label_column: str  # "" = no evaluation
    long_text: str
    min_batch_size: int
    max_batch_size: int
    max_line_bytes: int
    num_shards: int
    compression: str
    overwrite: bool


def build_parser():
    p = options.Parser(
        prog="python -m pipelines.batch_predict",
        description="Score TSV/CSV/JSONL/text rows with a model.export SavedModel.",
    )
    add = p.add_argument
    add("--saved_model", required=True, help="a model.export directory")
    add("--input", required=True, help="glob or comma-separated globs")
    add("--output_dir", required=True)
    add(
        "--text_column",
        default="",
        help="field with the text (default: sentence for TSV/CSV, text otherwise)",
    )
    add("--label_column", default="", help="field with the true label: evaluate")
    add("--long_text", default="truncate", choices=LONG_TEXT_MODES)
    add("--min_batch_size", type=int, default=DEFAULT_MIN_BATCH_SIZE)
    add("--max_batch_size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    add("--max_line_bytes", type=int, default=DEFAULT_MAX_LINE_BYTES)
    add("--num_shards", type=int, default=0, help="0 = let the runner decide")
    add("--compression", default="none", choices=COMPRESSIONS)
    add("--overwrite", type=options.parse_bool, nargs="?", const=True, default=False)
    return p


def parse(argv):
    """Returns `(BatchPredictSettings, PipelineOptions)`.

    Raises:
        options.UsageError: one line naming the first problem; nothing ran.
    """
    import sys

    from apache_beam.options.pipeline_options import PipelineOptions

    argv = sys.argv[1:] if argv is None else list(argv)
    args, beam_args = build_parser().parse_known_args(argv)
    unknown = options.unknown_beam_flags(beam_args)
    if unknown:
        raise options.UsageError(f"unknown flag(s): {' '.join(unknown)}")
    if not 1 <= args.min_batch_size <= args.max_batch_size:
        raise options.UsageError("need 1 <= --min_batch_size <= --max_batch_size")
    if args.max_line_bytes < 1:
        raise options.UsageError("--max_line_bytes must be at least 1")
    if args.num_shards < 0:
        raise options.UsageError("--num_shards must be >= 0")

    try:
        files = corpus.expand_patterns(args.input)
    except ValueError as e:
        raise options.UsageError(str(e)) from None
    formats = {labelled_text.detect_input_format(f) for f in files}
    if len(formats) > 1:
        raise options.UsageError(
            f"--input mixes formats ({', '.join(sorted(formats))}): score them "
            "in separate runs"
        )
    fmt = formats.pop()
    text_column = args.text_column or ("sentence" if fmt in ("tsv", "csv") else "text")
    if args.label_column and args.label_column == text_column:
        raise options.UsageError("--label_column must differ from --text_column")
    columns = []
    if fmt in ("tsv", "csv"):
        try:
            columns = read_header(files[0], fmt)
            for path in files[1:]:
                if read_header(path, fmt) != columns:
                    raise ConfigError(
                        f"{path}: its header differs from {files[0]}'s "
                        f"({', '.join(columns)})"
                    )
        except ConfigError as e:
            raise options.UsageError(str(e)) from None
        for flag, name in (
            ("--text_column", text_column),
            ("--label_column", args.label_column),
        ):
            if name and name not in columns:
                raise options.UsageError(
                    f"{flag} {name!r} is not in the header of {files[0]} "
                    f"(columns: {', '.join(columns)})"
                )
    elif fmt == labelled_text.TEXT_FORMAT and args.label_column:
        raise options.UsageError(
            "--label_column needs TSV/CSV/JSONL input (plain text has no labels)"
        )

    model = read_saved_model_info(args.saved_model)
    options.check_output_dir(args.output_dir)
    earlier = _our_outputs(args.output_dir)
    if earlier and not args.overwrite:
        raise options.UsageError(
            f"--output_dir {args.output_dir} holds earlier predictions "
            f"({os.path.basename(earlier[0])}, ...): pass --overwrite to replace them"
        )
    settings = BatchPredictSettings(
        model=model,
        input=args.input,
        input_files=tuple(files),
        fmt=fmt,
        columns=tuple(columns),
        output_dir=args.output_dir,
        text_column=text_column,
        label_column=args.label_column,
        long_text=args.long_text,
        min_batch_size=args.min_batch_size,
        max_batch_size=args.max_batch_size,
        max_line_bytes=args.max_line_bytes,
        num_shards=args.num_shards,
        compression=args.compression,
        overwrite=args.overwrite,
    )
    pipeline_options = PipelineOptions(beam_args)
    options.check_runner(pipeline_options)
    return settings, pipeline_options


def _our_outputs(output_dir: str) -> list[str]:
    """Paths in `output_dir` that an earlier run of this job wrote."""
    if not FileSystems.exists(output_dir):
        return []
    patterns = [FileSystems.join(output_dir, f"{PREDICTIONS_PREFIX}-*")] + [
        FileSystems.join(output_dir, name) for name in _OUR_FILES
    ]
    return sorted(m.path for r in FileSystems.match(patterns) for m in r.metadata_list)


# === The job ===
def build_pipeline(p: beam.Pipeline, settings: BatchPredictSettings) -> None:
    """Adds the job's transforms to `p`."""
    out, model = settings.output_dir, settings.model
    # Raw bytes, so that undecodable lines reach the dead-letter file.
    lines = (
        p
        | "ListInputs" >> beam.Create(list(settings.input_files))
        | "ReadRows"
        >> beam.io.ReadAllFromText(
            coder=beam.coders.BytesCoder(),
            skip_header_lines=1 if settings.fmt in ("tsv", "csv") else 0,
            with_filename=True,
        )
    )
    parsed = lines | "ParseRows" >> ParseRows(
        fmt=settings.fmt,
        columns=list(settings.columns),
        text_column=settings.text_column,
        label_column=settings.label_column,
        max_line_bytes=settings.max_line_bytes,
    )
    handler = SavedModelTextHandler(
        model.path,
        long_text=settings.long_text,
        min_batch_size=settings.min_batch_size,
        max_batch_size=settings.max_batch_size,
    )
    scored = parsed["rows"] | "ScoreTexts" >> ScoreTexts(handler)
    formatted = scored | "FormatPredictions" >> beam.ParDo(
        _FormatPredictionFn(
            labels=model.labels,
            label_names=model.label_names,
            evaluate=bool(settings.label_column),
        )
    ).with_outputs("eval", main="lines")
    suffix = ".jsonl.gz" if settings.compression == "gzip" else ".jsonl"
    _ = formatted.lines | "WritePredictions" >> beam.io.WriteToText(
        FileSystems.join(out, PREDICTIONS_PREFIX),
        file_name_suffix=suffix,
        num_shards=settings.num_shards,
    )
    _ = (
        parsed["bad"]
        | "FormatBad" >> beam.Map(lambda d: json.dumps(d, ensure_ascii=False))
        | "WriteDeadLetters"
        >> beam.io.WriteToText(
            FileSystems.join(out, DEAD_LETTER_FILE), shard_name_template=""
        )
    )
    if settings.label_column:
        _ = (
            formatted.eval
            | "Evaluate"
            >> EvaluatePredictions(labels=model.labels, label_names=model.label_names)
            | "MetricsJson" >> beam.Map(lambda m: json.dumps(m, indent=2))
            | "WriteMetrics"
            >> beam.io.WriteToText(
                FileSystems.join(out, METRICS_FILE), shard_name_template=""
            )
        )


def _clear_outputs(settings: BatchPredictSettings) -> None:
    """With --overwrite: removes an earlier run's outputs, nothing else."""
    if not FileSystems.exists(settings.output_dir):
        FileSystems.mkdirs(settings.output_dir)
        return
    stale = _our_outputs(settings.output_dir)
    if stale:
        FileSystems.delete(stale)


def run_pipeline(settings, pipeline_options):
    """Builds and runs the pipeline, waits for it; returns Beam's result."""
    if not pipeline_options.view_as(TestOptions).dry_run:
        _clear_outputs(settings)
    p = beam.Pipeline(options=pipeline_options)
    build_pipeline(p, settings)
    result = p.run()
    result.wait_until_finish()
    return result


def counter_totals(result) -> dict | None:
    """This job's counters (`options.counter_totals` over `NAMESPACES`)."""
    return options.counter_totals(result, NAMESPACES)


def write_summary(settings, result, seconds: float) -> dict:
    """Draws the confusion matrix, writes `summary.json` (last); returns it."""
    out = settings.output_dir
    c = counter_totals(result)
    counts = c or {}

    def get(ns, name):
        return int(counts.get(f"{ns}/{name}", 0))

    bad = {r: get(PARSE_NAMESPACE, r) for r in BAD_REASONS if get(PARSE_NAMESPACE, r)}
    shards = sorted(
        m.path
        for m in FileSystems.match([FileSystems.join(out, f"{PREDICTIONS_PREFIX}-*")])[
            0
        ].metadata_list
    )
    summary = {
        "saved_model": settings.model.path,
        "inputs": list(settings.input_files),
        "rows_read": get(PARSE_NAMESPACE, ROWS_READ),
        "rows_predicted": get(SCORE_NAMESPACE, ROWS_PREDICTED),
        "rows_dead_letter": sum(bad.values()),
        "rows_blank": get(PARSE_NAMESPACE, ROWS_BLANK),
        "dead_letter_reasons": bad,
        "long_text": settings.long_text,
        "max_seq_length": settings.model.max_seq_length,
        "texts_truncated": get(SCORE_NAMESPACE, TEXTS_TRUNCATED),
        "texts_scored_as_windows": get(SCORE_NAMESPACE, TEXTS_WINDOWED),
        "windows_scored": get(SCORE_NAMESPACE, WINDOWS_SCORED),
        "shards": [s.rsplit("/", 1)[-1] for s in shards],
        "seconds": round(seconds, 1),
        "metrics_reported": c is not None,
    }
    if settings.label_column:
        with FileSystems.open(
            FileSystems.join(out, METRICS_FILE), compression_type="uncompressed"
        ) as f:
            metrics = json.loads(f.read().decode("utf-8"))
        plot_confusion_matrix(metrics, FileSystems.join(out, CONFUSION_PNG))
        summary["evaluation"] = {
            k: metrics[k]
            for k in ("count", "accuracy", "macro_f1", "rows_with_unknown_label")
        }
    _write_atomic(
        FileSystems.join(out, SUMMARY_FILE),
        json.dumps(summary, indent=2).encode("utf-8"),
    )
    return summary


def summary_lines(summary: dict, output_dir: str) -> str:
    """A few lines a person reads at the end of a run."""
    s = summary
    seconds = max(s["seconds"], 1e-9)
    lines = [
        f"batch_predict: {s['rows_predicted']} predictions in "
        f"{len(s['shards'])} shard(s) in {s['seconds']} s "
        f"({s['rows_predicted'] / seconds:,.1f} rows/s)",
        f"  rows: {s['rows_read']} read = {s['rows_predicted']} predicted + "
        f"{s['rows_dead_letter']} dead letters + {s['rows_blank']} blank",
    ]
    if s["rows_dead_letter"]:
        reasons = ", ".join(f"{k}={v}" for k, v in s["dead_letter_reasons"].items())
        lines.append(
            f"  dead letters: {reasons} -> "
            f"{FileSystems.join(output_dir, DEAD_LETTER_FILE)}"
        )
    if s["long_text"] == "average":
        lines.append(
            f"  long texts: {s['texts_scored_as_windows']} scored as "
            f"{s['windows_scored']} windows of <= {s['max_seq_length']} tokens "
            "(probabilities averaged)"
        )
    else:
        lines.append(
            f"  long texts: {s['texts_truncated']} truncated to "
            f"{s['max_seq_length']} tokens (--long_text=average scores them whole)"
        )
    if "evaluation" in s:
        e = s["evaluation"]
        lines.append(
            f"  evaluation: accuracy {e['accuracy']:.4f}, macro-F1 "
            f"{e['macro_f1']:.4f} on {e['count']} rows; "
            f"{e['rows_with_unknown_label']} with a label the model does not "
            f"know -> {FileSystems.join(output_dir, METRICS_FILE)}"
        )
    if not s["metrics_reported"]:
        lines.append("  (this runner reported no metrics; counts are missing)")
    elif (
        s["rows_read"] != s["rows_predicted"] + s["rows_dead_letter"] + s["rows_blank"]
    ):
        lines.append("  WARNING: the counts do not add up; some rows are unaccounted")
    return "\n".join(lines)


def run(argv=None) -> dict:
    """Runs the job; returns the summary it wrote ({} for a dry run).

    Raises:
        options.UsageError: bad flags, before any work.
        options.JobFailed: no row could be scored (all bad or blank).
    """
    settings, pipeline_options = parse(argv)
    started = time.time()
    result = run_pipeline(settings, pipeline_options)
    if pipeline_options.view_as(TestOptions).dry_run:
        return {}  # Dataflow built the job offline; nothing was written
    summary = write_summary(settings, result, time.time() - started)
    print(summary_lines(summary, settings.output_dir))
    if summary["metrics_reported"] and not summary["rows_predicted"]:
        raise options.JobFailed(
            f"{settings.input}: no row could be scored "
            f"({summary['rows_dead_letter']} dead letters, "
            f"{summary['rows_blank']} blank)"
        )
    return summary


def _not_beam_memory_warning(record) -> bool:
    # Beam 2.77 imports `resource` in the same try as torch, so without
    # torch RunInference warns at each model load that it cannot read the
    # memory use. Noise here: the job does not use that number.
    return not record.getMessage().startswith("Resource module is not available")


def main(argv=None):
    logging.getLogger().addFilter(_not_beam_memory_warning)
    options.main(run, argv)


if __name__ == "__main__":
    main()
