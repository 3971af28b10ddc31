"""Classify sentences with an exported SavedModel; one JSON line each.

    python -m model.predict --saved_model=out/sst2_serving "a great film" ...
    cat sentences.txt | python -m model.predict --saved_model=out/sst2_serving

Sentences come from the arguments, else from stdin (one per line, read as
bytes and classified in batches of `--batch_size`, so input of any length
streams). Each output line, in input order: `{"text", "label",
"label_name" (null when the export has no names, as in batch_predict),
"label_value", "probabilities"}`; a model whose probabilities are not
finite (a diverged run) gets `{"line": N, "error": ...}` instead (NaN is
not JSON). A line that is not valid UTF-8 gets a line of its own,
`{"line": N, "error": "..."}` (N counts from 1), and every other line is
still answered; the exit status is then 1. A bad flag, or a
`--saved_model` that is not a SavedModel, is one `error:` line, exit 2.
Needs only TensorFlow and tensorflow-text: no Keras, no project model code.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys

from configs import fileio
from configs.cli import program_name, quiet_tensorflow_logs

LABELS_FILE = os.path.join("assets.extra", "labels.json")
SIGNATURE = "serving_default"


class UsageError(Exception):
    """A bad flag or path: one line, exit 2, before any sentence is read."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        raise UsageError(message)


class Predictor:
    """Wraps a raw-string SavedModel's `serving_default` signature.

    Args:
        saved_model_dir: str, a `model.export` directory.

    Calling it on a list of N strings returns N dicts (see module doc).
    """

    def __init__(self, saved_model_dir: str):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 (registers the tokenizer ops)

        self._tf = tf
        if not fileio.isdir(saved_model_dir):
            raise UsageError(f"--saved_model {saved_model_dir} is not a directory")
        if not tf.saved_model.contains_saved_model(saved_model_dir):
            raise UsageError(
                f"--saved_model {saved_model_dir} is not a SavedModel (no "
                "saved_model.pb): give the --export_dir of model.export"
            )
        self._model = tf.saved_model.load(saved_model_dir)
        if SIGNATURE not in self._model.signatures:
            raise UsageError(
                f"--saved_model {saved_model_dir} has no {SIGNATURE!r} signature "
                "taking raw text: give the --export_dir of model.export"
            )
        self._serve = self._model.signatures[SIGNATURE]
        self.labels, self.label_names = [], []
        path = fileio.join(saved_model_dir, LABELS_FILE)
        if fileio.exists(path):
            info = json.loads(fileio.read_text(path))
            self.labels = info.get("labels", [])
            self.label_names = info.get("label_names", [])

    def __call__(self, texts: list[str]) -> list[dict]:
        if not texts:
            return []
        out = self._serve(text=self._tf.constant(texts, self._tf.string))
        labels = out["label"].numpy()
        probabilities = out["probabilities"].numpy()
        results = []
        for text, label, probs in zip(texts, labels, probabilities):
            if not all(math.isfinite(float(p)) for p in probs):
                # NaN is not JSON: a diverged model gets an error line.
                results.append(
                    {
                        "error": "the model gave non-finite probabilities (it "
                        "diverged in training): re-export a model that trained "
                        "to finite losses"
                    }
                )
                continue
            result = {"text": text, "label": int(label)}
            # Always present, null without names: as batch_predict writes it.
            result["label_name"] = (
                self.label_names[int(label)]
                if int(label) < len(self.label_names)
                else None
            )
            if int(label) < len(self.labels):
                result["label_value"] = self.labels[int(label)]
            result["probabilities"] = [round(float(p), 6) for p in probs]
            results.append(result)
        return results


def _decoded(raw_lines, what: str):
    """`(number, text, None)` per line, or `(number, None, error)` for one
    that is not UTF-8. Lines are bytes (stdin) or str (arguments; an
    undecodable argument arrives as lone surrogates)."""
    for number, raw in enumerate(raw_lines, start=1):
        try:
            if isinstance(raw, bytes):
                text = raw.decode("utf-8").rstrip("\r\n")
            else:
                text = raw.rstrip("\r\n")
                text.encode("utf-8")  # lone surrogates fail here
            yield number, text, None
        except UnicodeError as e:
            reason = f"{e.reason} at position {e.start}"
            yield number, None, f"{what} {number} is not valid UTF-8 ({reason})"


def _batches(items, batch_size):
    iterator = iter(items)
    while True:
        batch = list(itertools.islice(iterator, batch_size))
        if not batch:
            return
        yield batch


def _answer(predictor, batch) -> list[dict]:
    """One output dict per `(number, text, error)`, in order. A batch the
    model rejects is retried line by line, so one bad line costs only its
    own answer."""
    texts = [text for _, text, error in batch if error is None]
    try:
        results, failure = iter(predictor(texts)), None
    except Exception as e:  # the model refused something in this batch
        if len(texts) > 1:
            return [out for item in batch for out in _answer(predictor, [item])]
        results, failure = None, f"{type(e).__name__}: {str(e).splitlines()[0]}"
    out = []
    for number, text, error in batch:
        if error is None and results is None:
            error = f"line {number} could not be classified ({failure})"
        if error is not None:
            out.append({"line": number, "error": error})
        else:
            result = next(results)
            if "error" in result:
                result = {"line": number, **result}
            out.append(result)
    return out


def run(argv=None, stdin=None, stdout=None) -> dict:
    """Prints one JSON line per input line.

    Returns:
        `{"classified": int, "failed": int}`.

    Raises:
        UsageError: a bad flag or a `--saved_model` that is not an export
            (before any input is read).
    """
    parser = _Parser(
        prog=program_name("model.predict"),
        allow_abbrev=False,
        description="Classify sentences with a raw-string SavedModel: the "
        "sentences given as arguments, else one per line read from stdin; one "
        "JSON object per sentence on stdout.",
    )
    parser.add_argument(
        "--saved_model", required=True, help="a model.export SavedModel directory"
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=256,
        help="sentences per model call (default 256)",
    )
    parser.add_argument(
        "sentences",
        nargs="*",
        help="sentences to classify; none: read lines from stdin",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError("--batch_size must be at least 1")
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    predictor = Predictor(args.saved_model)
    if args.sentences:
        items = _decoded(args.sentences, "argument")
    else:
        # Bytes, so that one undecodable line fails alone, not the stream.
        items = _decoded(getattr(stdin, "buffer", stdin), "line")
    counts = {"classified": 0, "failed": 0}
    for batch in _batches(items, args.batch_size):
        for result in _answer(predictor, batch):
            counts["failed" if "error" in result else "classified"] += 1
            stdout.write(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n")
        stdout.flush()
    return counts


def main(argv=None):
    # stdout carries only JSON lines.
    quiet_tensorflow_logs()
    try:
        counts = run(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if counts["failed"]:
        print(
            f"error: {counts['failed']} line(s) could not be classified "
            f"({counts['classified']} were); see the lines with \"error\"",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
