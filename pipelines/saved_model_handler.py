"""A `model.export` SavedModel as a Beam RunInference model handler.

`read_saved_model_info` checks a directory is one of our exports (one
line when not); `SavedModelTextHandler` loads it once per worker process
with `tf.saved_model.load` (Beam's own TensorFlow handler goes through
`tf.keras.models.load_model`, which refuses SavedModels under Keras 3)
and calls `serving_default` on batches of raw strings; texts longer than
the model's `max_seq_length` are truncated or, with `long_text=average`,
scored as overlapping windows (`window_spans`) whose probabilities are
averaged.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from pipelines import options

# === What a `model.export` SavedModel looks like ===
SERVING_SIGNATURE = "serving_default"
TEXT_INPUT = "text"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
LABELS_FILE = "assets.extra/labels.json"
VOCAB_FILE = "assets.extra/vocab.txt"
# --long_text=average: windows of max_seq_length - 2 wordpieces, each
# starting half a window after the one before.
WINDOW_STRIDE_FRACTION = 0.5
LONG_TEXT_MODES = ("truncate", "average")
# RunInference batch sizes. The SavedModel pads every row to max_seq_length,
# so only the row count matters. bert_tiny (seq 64) on 2 CPU cores,
# serving_default in a tight loop, is fastest at 256 rows when the machine
# is quiet (1,950/s vs 1,713 at 128) and at 64 under load (1,060 vs 884 at
# 256); the job ran the same within 3% at 32..128 (BatchElements adapts),
# 32..256 and a fixed 64. benchmarks/batch_predict.py measures it.
DEFAULT_MIN_BATCH_SIZE = 32
DEFAULT_MAX_BATCH_SIZE = 128


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
