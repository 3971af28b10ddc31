"""Classify sentences with an exported SavedModel; one JSON line each.

    python -m model.predict --saved_model=out/sst2_serving "a great film" ...
    cat sentences.txt | python -m model.predict --saved_model=out/sst2_serving

Sentences come from the arguments, else from stdin (one per line, read and
classified in batches of `--batch_size`, so input of any length streams).
Each output line: `{"text", "label", "label_name" (when the export knows
names), "label_value", "probabilities"}`. Needs only TensorFlow and
tensorflow-text: no Keras, no project model code.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

# Quiet TensorFlow's C++ start-up logs; stdout carries only JSON lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS_FILE = os.path.join("assets.extra", "labels.json")


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
        self._model = tf.saved_model.load(saved_model_dir)
        self._serve = self._model.signatures["serving_default"]
        self.labels, self.label_names = [], []
        path = os.path.join(saved_model_dir, LABELS_FILE)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                info = json.load(f)
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
            result = {"text": text, "label": int(label)}
            if int(label) < len(self.label_names):
                result["label_name"] = self.label_names[int(label)]
            if int(label) < len(self.labels):
                result["label_value"] = self.labels[int(label)]
            result["probabilities"] = [round(float(p), 6) for p in probs]
            results.append(result)
        return results


def _batches(lines, batch_size):
    iterator = iter(lines)
    while True:
        batch = list(itertools.islice(iterator, batch_size))
        if not batch:
            return
        yield batch


def run(argv=None, stdin=None, stdout=None) -> int:
    """Prints one JSON line per sentence; returns how many were classified."""
    parser = argparse.ArgumentParser(
        prog="python -m model.predict",
        description="Classify sentences with a raw-string SavedModel.",
    )
    parser.add_argument("--saved_model", required=True)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("sentences", nargs="*")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    if not os.path.isdir(args.saved_model) and "://" not in args.saved_model:
        parser.error(f"--saved_model {args.saved_model} is not a directory")
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    predictor = Predictor(args.saved_model)
    lines = args.sentences or (line.rstrip("\r\n") for line in stdin)
    count = 0
    for batch in _batches(lines, args.batch_size):
        for result in predictor(batch):
            stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
            count += 1
        stdout.flush()
    return count


def main(argv=None):
    run(argv)


if __name__ == "__main__":
    main()
