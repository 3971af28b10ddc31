"""Export a fine-tuned classifier as one SavedModel: raw strings in.

    python -m model.export --model_dir=out/sst2 --export_dir=out/sst2_serving

The SavedModel's `serving_default` signature takes `text` (tf.string
`[None]`) and returns `label` (int64 `[None]`, the class id) and
`probabilities` (float32 `[None, num_labels]`, softmax). The tokenizer
runs inside the graph: `configs.tokenization.build_tokenizer` (the
vocabulary is baked into the FastBertTokenizer model constant) and
`pack_classification_inputs` (the code the Beam data job runs), truncating
to `export.max_seq_length`. A second signature, `tokenize`, returns the
packed int64 `input_ids`/`input_mask`/`segment_ids` so parity with the data
job can be checked on the served artifact itself.

`--format=huggingface` writes a Hugging Face BERT directory instead
(`config.json`, `model.safetensors`, `vocab.txt`, `tokenizer_config.json`):
a fine-tuning run as `BertForSequenceClassification` (`id2label` /
`label2id` from its labels), a pretraining run as `BertForPreTraining`
(encoder, MLM and NSP heads from its newest checkpoint); see
`model.checkpoints.huggingface`. transformers loads it, and
`--init_checkpoint` reads it back exactly. `--format=tf1` writes the same
runs as a google-research/bert checkpoint (`bert_model.ckpt`,
`bert_config.json`, `vocab.txt`; `model.checkpoints.tf1`), which that
repository's scripts take as `--init_checkpoint`.

Written with `keras.export.ExportArchive`, which TF Serving's session-based
loader accepts (a hand-written `tf.Module` failed there with "Could not
find variable"). Loading needs only `tensorflow` and `tensorflow_text`
(for the tokenizer ops). `assets.extra/labels.json` holds the label values
and names, `assets.extra/vocab.txt` a copy of the vocabulary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import uuid

from configs import features, fileio, output_lock
from configs.cli import add_overwrite_flag, program_name, quiet_tensorflow_logs
from configs.loader import load_resolved
from configs.schema import ConfigError

SERVING_SIGNATURE = "serving_default"
TOKENIZE_SIGNATURE = "tokenize"
TEXT_INPUT = "text"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
LABELS_FILE = "labels.json"  # in assets.extra/


def export_classifier(
    classifier,
    export_dir: str,
    *,
    vocab: list[str],
    do_lower_case: bool,
    max_seq_length: int,
    labels: list[str],
    label_names: list[str] = (),
) -> str:
    """Writes `classifier` with an in-graph tokenizer as a SavedModel.

    Args:
        classifier: a `BertClassifier` (any Keras model taking the packed
            int32 dict and returning logits `[batch, num_labels]`).
        export_dir: where to write the SavedModel.
        vocab: list[str], the vocabulary the model was trained with.
        do_lower_case: bool, as in training.
        max_seq_length: int, longer inputs are truncated to this.
        labels: label values in id order (label id i = `labels[i]`).
        label_names: optional human names, one per label.

    Returns:
        `export_dir`.
    """
    import keras
    import tensorflow as tf

    from model.text_data import TextPacker, to_model_inputs

    packer = TextPacker(vocab, do_lower_case, max_seq_length)
    text_spec = tf.TensorSpec([None], tf.string, name=TEXT_INPUT)

    def serve(text):
        logits = classifier(to_model_inputs(packer(text)), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        return {
            LABEL_OUTPUT: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            PROBABILITIES_OUTPUT: probabilities,
        }

    def tokenize(text):
        return dict(packer(text))

    archive = keras.export.ExportArchive()
    # No `archive.track(classifier)`: the endpoints track the variables they
    # use (`_all_variables`); tracking the model too stores every weight a
    # second time (Keras 3.15 saves its variable wrappers and the captured
    # tf.Variables as separate objects: a SavedModel twice the weights).
    # The tokenizer is a constant, not a resource that needs tracking.
    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[text_spec])
    archive.add_endpoint(TOKENIZE_SIGNATURE, tokenize, input_signature=[text_spec])
    # A local export is written beside its target and renamed into place,
    # so a killed export never leaves half a SavedModel under the name
    # (object stores have no directory rename: written in place there).
    final_dir, export_dir = export_dir, export_dir
    if not fileio.is_remote(final_dir):
        final_dir = final_dir.rstrip(os.sep)
        for stale in fileio.glob(f"{final_dir}.tmp-*"):  # killed exports'
            fileio.remove(stale)
        export_dir = f"{final_dir}.tmp-{uuid.uuid4().hex[:8]}"
    with _removed_on_failure(export_dir, final_dir):
        archive.write_out(export_dir, verbose=False)
        extra = fileio.join(export_dir, "assets.extra")
        fileio.makedirs(extra)
        fileio.write_atomic(fileio.join(extra, "vocab.txt"), "\n".join(vocab) + "\n")
        info = {
            "labels": list(labels),
            "label_names": list(label_names),
            "max_seq_length": max_seq_length,
            "do_lower_case": do_lower_case,
        }
        # Last: model.predict reads the label names from it.
        fileio.write_atomic(fileio.join(extra, LABELS_FILE), json.dumps(info, indent=2))
    _rename_into_place(export_dir, final_dir)
    return final_dir


@contextlib.contextmanager
def _removed_on_failure(temp_dir: str, final_dir: str):
    """Deletes the export being written at `temp_dir` if writing fails.

    A full disk (or a file-size limit) mid-export would otherwise leave a
    cut SavedModel beside the target until the next export. The error is
    re-raised: a full disk (in TensorFlow's wrapper or not) as an `OSError`
    naming `final_dir`, which `main` prints as one line.
    """
    try:
        yield
    except BaseException as e:
        if temp_dir != final_dir:  # never delete what is under the final name
            with contextlib.suppress(Exception):
                fileio.remove(temp_dir)
        if fileio.is_disk_full(e):  # named by the export, not its temp name
            raise fileio.disk_full_error(e, final_dir) from None
        raise


def _rename_into_place(temp_dir: str, final_dir: str) -> None:
    """Replaces `final_dir` with the whole export at `temp_dir` (local)."""
    if temp_dir == final_dir:
        return
    old = f"{temp_dir}.old"
    if os.path.exists(final_dir):
        os.replace(final_dir, old)
    os.replace(temp_dir, final_dir)
    fileio.remove(old)


def load_finetuned(model_dir: str):
    """Rebuilds the fine-tuned classifier of `model_dir` with its best weights.

    Returns:
        (classifier, cfg, vocab list).
    """
    from model.bert_backbone import BertBackbone
    from model.bert_classifier import BertClassifier
    from model.finetune import BEST_WEIGHTS_FILE, EVAL_METRICS_FILE

    if not fileio.isdir(model_dir):
        raise ConfigError(f"--model_dir {model_dir} is not a directory")
    cfg = load_resolved(model_dir)
    weights = fileio.join(model_dir, BEST_WEIGHTS_FILE)
    if not fileio.exists(weights):
        raise ConfigError(f"{model_dir} has no {BEST_WEIGHTS_FILE}: fine-tune first")
    if not fileio.exists(fileio.join(model_dir, EVAL_METRICS_FILE)):
        raise ConfigError(
            f"{model_dir} has {BEST_WEIGHTS_FILE} but no {EVAL_METRICS_FILE}: "
            "its fine-tuning run did not finish (killed, interrupted or "
            "failed); rerun model.finetune"
        )
    if not cfg.finetune.labels:
        raise ConfigError(f"{model_dir}/config.yaml lists no finetune.labels")
    vocab_path = cfg.data.vocab_file
    if not os.path.isabs(vocab_path) and not fileio.is_remote(vocab_path):
        vocab_path = fileio.join(model_dir, vocab_path)
    if not fileio.exists(vocab_path):
        raise ConfigError(f"{model_dir}: vocabulary {vocab_path} does not exist")
    vocab = features.read_vocab(vocab_path)
    backbone = BertBackbone.from_model_config(cfg.model)
    pooling = cfg.finetune.pooling if cfg.finetune.pooling != "auto" else "cls"
    classifier = BertClassifier(
        backbone,
        len(cfg.finetune.labels),
        dropout=cfg.finetune.dropout,
        pooling=pooling,
    )
    classifier.load_weights(weights)  # Keras copies remote files itself
    return classifier, cfg, vocab


def run(argv=None) -> str:
    """Exports (see `_run`); `--export_dir` is locked while it runs."""
    with output_lock.released_at_end():
        return _run(argv)


def _run(argv=None) -> str:
    """Exports `--model_dir`'s best weights to `--export_dir`; returns it."""
    parser = _Parser(
        prog=program_name("model.export"),
        allow_abbrev=False,
        description="A fine-tuning run -> a raw-string SavedModel; --format="
        "huggingface: a fine-tuning or pretraining run -> a transformers "
        "directory; --format=tf1: -> a google-research/bert checkpoint.",
    )
    parser.add_argument(
        "--model_dir",
        required=True,
        help="a model.finetune run (its best weights, config and vocab)",
    )
    parser.add_argument(
        "--export_dir",
        required=True,
        help="output directory: the SavedModel (raw strings in; label, "
        "probabilities out) or the Hugging Face files",
    )
    parser.add_argument(
        "--max_seq_length",
        type=int,
        default=0,
        help="longer texts are truncated to this many wordpieces (default 0 = "
        "export.max_seq_length of the run's config)",
    )
    parser.add_argument(
        "--format",
        choices=("saved_model", "huggingface", "tf1"),
        default="saved_model",
        help="saved_model (default): the serving SavedModel of a fine-tuning "
        "run; huggingface: a transformers BERT directory of a fine-tuning "
        "run (BertForSequenceClassification) or a pretraining run "
        "(BertForPreTraining); tf1: a google-research/bert checkpoint "
        "(bert_model.ckpt, bert_config.json, vocab.txt) of either, with the "
        "MLM/NSP heads or run_classifier.py's output_weights/output_bias",
    )
    add_overwrite_flag(parser.add_argument, "replace an earlier export in --export_dir")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ConfigError(f"unknown flag(s): {' '.join(unknown)}")
    if fileio.same_path(args.export_dir, args.model_dir):
        raise ConfigError("--export_dir must not be the --model_dir")
    output_lock.acquire(args.export_dir, "model.export")
    if args.format in ("huggingface", "tf1"):
        return export_checkpoint(args.model_dir, args.export_dir, args.format)
    if fileio.isfile(args.export_dir):
        raise ConfigError(f"--export_dir {args.export_dir} is a file")
    if (
        fileio.isdir(args.export_dir)
        and fileio.listdir(args.export_dir)
        and not fileio.exists(fileio.join(args.export_dir, "saved_model.pb"))
    ):
        raise ConfigError(
            f"--export_dir {args.export_dir} holds files but no SavedModel; "
            "give a new or an earlier export's directory"
        )
    if (
        fileio.exists(fileio.join(args.export_dir, "saved_model.pb"))
        and not args.overwrite
    ):
        raise ConfigError(
            f"--export_dir {args.export_dir} holds an earlier export: pass "
            "--overwrite to replace it, or give another --export_dir"
        )
    classifier, cfg, vocab = load_finetuned(args.model_dir)
    _check_finite_weights(classifier, args.model_dir)
    max_seq_length = args.max_seq_length or cfg.export.max_seq_length
    if not 8 <= max_seq_length <= cfg.model.max_sequence_length:
        raise ConfigError(
            f"max_seq_length {max_seq_length} must be in "
            f"[8, {cfg.model.max_sequence_length}]"
        )
    export_classifier(
        classifier,
        args.export_dir,
        vocab=vocab,
        do_lower_case=cfg.data.do_lower_case,
        max_seq_length=max_seq_length,
        labels=list(cfg.finetune.labels),
        label_names=list(cfg.export.label_names),
    )
    print(
        f"exported {args.model_dir} -> {args.export_dir} (signature "
        f"{SERVING_SIGNATURE}: {TEXT_INPUT} string [None] -> {LABEL_OUTPUT} int64 "
        f"[None], {PROBABILITIES_OUTPUT} float32 [None, {len(cfg.finetune.labels)}])"
    )
    return args.export_dir


def export_huggingface(model_dir: str, export_dir: str) -> str:
    """Writes our run `model_dir` as a Hugging Face BERT directory."""
    return export_checkpoint(model_dir, export_dir, "huggingface")


def export_checkpoint(model_dir: str, export_dir: str, fmt: str) -> str:
    """Writes our run `model_dir` as a Hugging Face BERT directory (`fmt`
    "huggingface") or a google-research/bert TF1 checkpoint ("tf1").

    Raises:
        ConfigError: `model_dir` is not a BERT run of ours, a mean-pooling
            classifier (both formats' classifiers pool [CLS]), or
            `export_dir` holds other files.
    """
    from model.checkpoints import huggingface, ours, tf1

    # Per format: the file that marks an earlier export, its name, what
    # reads a classifier there, and what a classifier / a pretraining run
    # is written as.
    marker, label, reader, as_classifier, as_pretraining = {
        "huggingface": (
            huggingface.CONFIG_FILE,
            "Hugging Face",
            "BertForSequenceClassification",
            "BertForSequenceClassification",
            "BertForPreTraining",
        ),
        "tf1": (
            tf1.CONFIG_FILE,
            "google-research/bert TF1",
            "run_classifier.py",
            "encoder + classifier",
            "encoder + MLM/NSP heads",
        ),
    }[fmt]
    kind = ours.kind(model_dir)
    if kind not in ("pretraining", "finetuned"):
        raise ConfigError(
            f"--model_dir {model_dir} is not a BERT pretraining or fine-tuning "
            "run of ours (config.yaml with encoder.weights.h5 or "
            f"best.weights.h5); only those export to {label} BERT"
        )
    if fileio.same_path(export_dir, model_dir):
        raise ConfigError("--export_dir must not be the --model_dir")
    if fileio.isfile(export_dir):
        raise ConfigError(f"--export_dir {export_dir} is a file")
    if (
        fileio.isdir(export_dir)
        and fileio.listdir(export_dir)
        and not fileio.exists(fileio.join(export_dir, marker))
    ):
        raise ConfigError(
            f"--export_dir {export_dir} holds files but no {marker};"
            f" give a new or an earlier {label} export's directory"
        )
    cfg = load_resolved(model_dir)
    if kind == "finetuned":
        classifier, cfg, vocab = load_finetuned(model_dir)
        if classifier.pooling != "cls":
            raise ConfigError(
                f"{model_dir} pools by {classifier.pooling}; "
                f"{reader} reads BERT's [CLS] pooler: "
                "export it as a SavedModel (--format=saved_model)"
            )
        parts = dict(
            backbone=classifier.backbone,
            classifier=classifier,
            labels=list(cfg.finetune.labels),
            label_names=list(cfg.export.label_names),
        )
        what = as_classifier
    else:
        from model.bert_backbone import load_pretrained_backbone
        from model.bert_pretrainer import BertPretrainer

        backbone = load_pretrained_backbone(model_dir)
        pretrainer = BertPretrainer(backbone)
        for note in ours.load_pretraining_heads(pretrainer, model_dir):
            print(f"note: {note}")
        # The final encoder (the newest checkpoint may predate it).
        backbone.load_weights(
            ours._local_copy(fileio.join(model_dir, ours.ENCODER_WEIGHTS_FILE))
        )
        vocab_path = fileio.join(model_dir, "vocab.txt")
        if not fileio.exists(vocab_path):
            raise ConfigError(f"{model_dir} has no vocab.txt to export")
        vocab = features.read_vocab(vocab_path)
        parts = dict(backbone=backbone, pretrainer=pretrainer)
        what = as_pretraining
    final_dir, temp_dir = export_dir.rstrip("/"), export_dir.rstrip("/")
    if not fileio.is_remote(final_dir):
        temp_dir = f"{final_dir}.tmp-{uuid.uuid4().hex[:8]}"
    with _removed_on_failure(temp_dir, final_dir):
        if fmt == "huggingface":
            huggingface.export(
                temp_dir,
                model_cfg=cfg.model,
                vocab=vocab,
                do_lower_case=cfg.data.do_lower_case,
                **parts,
            )
        else:
            tf1.export(
                temp_dir,
                model_cfg=cfg.model,
                vocab=vocab,
                backbone=parts["backbone"],
                pretrainer=parts.get("pretrainer"),
                classifier=parts.get("classifier"),
            )
    _rename_into_place(temp_dir, final_dir)
    print(f"exported {model_dir} -> {final_dir} ({label} {what})")
    return final_dir


def _check_finite_weights(model, model_dir):
    """Refuses weights with NaN or infinite values (a diverged run)."""
    import keras
    import numpy as np

    for variable in model.weights:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable))):
            raise ConfigError(
                f"{model_dir}: weight {variable.path} holds NaN or infinite "
                "values (the run diverged): fine-tune again with a lower "
                "learning rate"
            )


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + error
        raise ConfigError(message)


def main(argv=None):
    """Bad flags, paths and configs: one `error:` line, exit 2, before any work."""
    quiet_tensorflow_logs()
    try:
        run(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if not fileio.is_disk_full(e):
            raise
        then = "--export_dir is as it was (no cut export left); rerun to export"
        print(f"error: {fileio.disk_full_line(e, then=then)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
