"""Frozen-encoder linear probe on SST-2: what pretraining put in the features.

    .venv/bin/python benchmarks/linear_probe.py --encoder=RUN [--encoder=RUN2 ...]
        [--random=pretrain/bert_tiny.yaml] [--train=...] [--dev=...]

For each encoder (any `--init_checkpoint` the product reads: our pretraining
run, a Hugging Face directory, a TF1 checkpoint) and for a randomly
initialised encoder of the same config (`--random`, the baseline measured in
the same run), the product's tokenizer (`configs.tokenization`) packs the
sentences, the product's `load_pretrained_backbone` encodes them (dropout
off, float32), and a logistic regression (scikit-learn, C picked on dev like
`benchmarks/sst2.py`'s TF-IDF baseline) is fit on the frozen [CLS]-pooler
and mean-pooled features. Dev accuracy per pooling, and the [CLS] output's
spread across sentences (a collapsed [CLS] has std ~0).

Cheap (seconds per encoder at tiny size): a fine-tuning-free signal of
representation quality to read next to the fine-tuned lift, which
fine-tuning's own learning can hide.
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.join(REPO, "..", "shared", "data")
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def read_tsv(path):
    """(texts, int labels) of a `sentence<TAB>label` file, read by the
    product's own reader (`model.text_data.read_labelled_file`)."""
    from model.text_data import read_labelled_file

    rows = read_labelled_file(path, text_column="sentence", label_column="label")
    return rows.texts_a, np.array([int(y) for y in rows.labels])


def encode(backbone, vocab, do_lower_case, texts, seq, batch=256):
    """(pooled [n, hidden], mean [n, hidden]) float32 features."""
    import tensorflow as tf

    from configs import features
    from configs.tokenization import build_tokenizer, pack_classification_inputs

    tokenizer = build_tokenizer(vocab, do_lower_case)
    ids = features.special_token_ids(vocab)
    pooled, mean = [], []
    for i in range(0, len(texts), batch):
        pieces = tokenizer.tokenize(tf.constant(texts[i : i + batch]))
        x = pack_classification_inputs(
            [pieces],
            max_seq_length=seq,
            cls_id=ids[features.CLS],
            sep_id=ids[features.SEP],
        )
        x = {k: tf.cast(v, tf.int32) for k, v in x.items()}
        out = backbone(x, training=False)
        m = tf.cast(x[features.INPUT_MASK], tf.float32)[:, :, None]
        seq_out = tf.cast(out["sequence_output"], tf.float32)
        mean.append((tf.reduce_sum(seq_out * m, 1) / tf.reduce_sum(m, 1)).numpy())
        pooled.append(tf.cast(out["pooled_output"], tf.float32).numpy())
    return np.concatenate(pooled), np.concatenate(mean)


def probe(train_x, train_y, dev_x, dev_y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    a, b = scaler.transform(train_x), scaler.transform(dev_x)
    best = 0.0
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=3000).fit(a, train_y)
        best = max(best, float((model.predict(b) == dev_y).mean()))
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", action="append", default=[])
    p.add_argument("--random", default="pretrain/bert_tiny.yaml")
    p.add_argument("--vocab", default=f"{SHARED}/vocab/bert-base-uncased-vocab.txt")
    p.add_argument("--train", default=f"{SHARED}/sentiment/sst2_sentences_train.tsv")
    p.add_argument("--dev", default=f"{SHARED}/sentiment/sst2_dev.tsv")
    p.add_argument("--max_seq_length", type=int, default=64)
    args = p.parse_args(argv)
    sys.path.insert(0, REPO)
    os.chdir(REPO)
    if not os.path.exists(args.train):
        sys.exit(f"{args.train} not found: needs ../shared/data")
    import keras

    from configs import features
    from configs.loader import load_config
    from model import checkpoints
    from model.bert_backbone import BertBackbone, load_pretrained_backbone

    train_texts, train_y = read_tsv(args.train)
    dev_texts, dev_y = read_tsv(args.dev)
    arms = []
    if args.random:
        keras.utils.set_random_seed(0)
        cfg = load_config([args.random], [])
        backbone = BertBackbone.from_model_config(cfg.model)
        arms.append(("random init", backbone, features.read_vocab(args.vocab), True))
    for path in args.encoder:
        ckpt = checkpoints.inspect(path)
        backbone = load_pretrained_backbone(path, dtype="float32")
        vocab = checkpoints.checkpoint_vocab(ckpt) or features.read_vocab(args.vocab)
        lower = ckpt.do_lower_case if ckpt.do_lower_case is not None else True
        arms.append((path, backbone, vocab, lower))
    print("| encoder | [CLS] pooler probe | mean-pooled probe | [CLS] std / norm |")
    print("| --- | ---: | ---: | ---: |")
    for name, backbone, vocab, lower in arms:
        began = time.time()
        tp, tm = encode(backbone, vocab, lower, train_texts, args.max_seq_length)
        dp, dm = encode(backbone, vocab, lower, dev_texts, args.max_seq_length)
        spread = float(tp.std(0).mean()) / float(np.linalg.norm(tp, axis=1).mean())
        cls_acc = probe(tp, train_y, dp, dev_y)
        mean_acc = probe(tm, train_y, dm, dev_y)
        print(
            f"| {name} | {100 * cls_acc:.1f} | {100 * mean_acc:.1f} | "
            f"{spread:.4f} | ({time.time() - began:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
