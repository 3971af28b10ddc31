"""Tests for model/finetune.py and model/text_data.py (tiny model, few steps)."""

import json
import os

import numpy as np
import pytest
import yaml

from configs import features
from configs.loader import dump_config, load_config, load_resolved
from configs.metrics import accuracy_and_macro_f1
from configs.schema import ConfigError
from model import finetune, text_data
from model.bert_backbone import ENCODER_WEIGHTS_FILE, BertBackbone

TINY = [
    "model.num_layers=1",
    "model.num_heads=2",
    "model.hidden_dim=16",
    "model.intermediate_dim=32",
    "model.max_sequence_length=32",
    "model.dropout=0.0",
    "finetune.max_seq_length=16",
    "data.max_seq_length=32",
    "finetune.batch_size=4",
]
GOOD = ["the movie was good", "a great film", "wonderful", "good good film"]
BAD = ["a terrible movie", "bad film", "not good at all", "the film was bad"]


def _write_tsv(path, rows, header="sentence\tlabel"):
    path.write_text(header + "\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return str(path)


@pytest.fixture
def sst_files(tmp_path):
    train = [(t, 1) for t in GOOD] + [(t, 0) for t in BAD]
    train = train * 2 + [("", 1)]  # missing text: a bad row (1 of 17)
    dev = [(GOOD[0], 1), (BAD[0], 0), (BAD[1], 0)]
    return _write_tsv(tmp_path / "train.tsv", train), _write_tsv(
        tmp_path / "dev.tsv", dev
    )


def _args(train, dev, model_dir, vocab_file, *extra):
    args = [
        "--config=configs/finetune/sst2.yaml",
        f"--train={train}",
        f"--eval={dev}",
        f"--model_dir={model_dir}",
        f"--vocab={vocab_file}",
    ]
    return args + [f"--set={s}" for s in TINY] + list(extra)


# === Pure pieces ===
def test_classification_metrics():
    m = accuracy_and_macro_f1([0, 0, 1, 1], [0, 1, 1, 1], 2)
    assert m["accuracy"] == pytest.approx(0.75)
    # F1(0) = 2/3, F1(1) = 4/5.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert finetune.mean_std([0.8, 0.9]) == pytest.approx((0.85, 0.0707106), rel=1e-5)
    assert finetune.mean_std([0.5]) == (0.5, 0.0)


def test_read_labelled_file_counts_bad_rows(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b'sentence\tlabel\na "quote\t1\n\xff\t0\nno label\t\n\nfine\t0\n')
    rows = text_data.read_labelled_file(
        str(path), text_column="sentence", label_column="label"
    )
    assert rows.texts_a == ['a "quote', "fine"]
    assert rows.labels == ["1", "0"]
    assert [b["reason"] for b in rows.bad] == ["undecodable-bytes", "missing-label"]
    assert [b["line_number"] for b in rows.bad] == [3, 4]
    assert rows.blank == 1
    rows.drop_unknown_labels(["1"])
    assert rows.texts_a == ['a "quote'] and rows.bad[-1]["reason"] == "unknown-label"


def test_tokenized_dataset_matches_packer(vocab_tokens):
    rows = text_data.LabelledRows("x", ["the dog", "good film"], None, ["1", "0"], [])
    packer = text_data.TextPacker(vocab_tokens, True, 8)
    out = list(text_data.tokenized_dataset(rows, [1, 0], packer))
    ids = {t: i for i, t in enumerate(vocab_tokens)}
    first, label = out[0]
    assert int(label) == 1
    assert first["input_ids"].numpy().tolist() == [
        ids["[CLS]"],
        ids["the"],
        ids["dog"],
        ids["[SEP]"],
        0,
        0,
        0,
        0,
    ]
    assert first["input_ids"].dtype.name == "int32"


def _padded_rows(lengths, seq):
    """Unbatched `(features, label)` rows, row i with lengths[i] real tokens."""
    import tensorflow as tf

    n = len(lengths)
    positions = np.arange(seq)[None, :]
    mask = (positions < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = (np.arange(n)[:, None] * 1000 + positions + 1) * mask  # row-unique
    x = {
        features.INPUT_IDS: ids.astype(np.int32),
        features.INPUT_MASK: mask,
        features.SEGMENT_IDS: np.zeros_like(mask),
    }
    return tf.data.Dataset.from_tensor_slices((x, np.arange(n, dtype=np.int32)))


@pytest.mark.parametrize("group_batches", [1, 4, 16])
def test_length_grouped_batches_keep_every_row_and_token(group_batches):
    rng = np.random.default_rng(group_batches)
    seq, batch = 64, 8
    lengths = rng.integers(2, seq + 1, size=500)
    ds = _padded_rows(lengths, seq)
    batches = list(
        text_data.length_grouped_batches(
            ds, batch, seed=3, group_batches=group_batches, pad_multiple=8
        )
    )
    seen = []
    widths = set()
    for x, y in batches:
        ids, mask = x[features.INPUT_IDS].numpy(), x[features.INPUT_MASK].numpy()
        width = ids.shape[1]
        longest = mask.sum(axis=1).max()
        # Trimmed to the longest row rounded up to 8, never cutting a token.
        assert width == min(seq, -(-longest // 8) * 8)
        widths.add(width)
        for row, label in zip(range(len(y)), y.numpy()):
            n = lengths[label]
            assert mask[row].sum() == n  # every real token is still there
            expected = label * 1000 + np.arange(1, n + 1)
            np.testing.assert_array_equal(ids[row, :n], expected)
            assert not ids[row, n:].any()
        seen.extend(y.numpy().tolist())
    assert sorted(seen) == list(range(len(lengths)))  # each row exactly once
    assert widths <= set(range(8, seq + 1, 8))
    if group_batches > 1:
        # Grouping is what saves the padding: batches are far narrower than
        # with plain batching of the same rows.
        plain = [
            min(seq, -(-lengths[i : i + batch].max() // 8) * 8)
            for i in range(0, len(lengths), batch)
        ]
        grouped = [x[features.INPUT_IDS].shape[1] for x, _ in batches]
        assert np.mean(grouped) < 0.85 * np.mean(plain)


def test_length_grouped_batches_order_depends_on_seed():
    lengths = np.random.default_rng(0).integers(2, 33, size=256)

    def first_labels(seed):
        ds = _padded_rows(lengths, 32)
        return [
            y.numpy().tolist()
            for _, y in text_data.length_grouped_batches(ds, 8, seed=seed)
        ]

    assert first_labels(1) == first_labels(1)
    assert first_labels(1) != first_labels(2)


# === Runs ===
def test_finetune_from_scratch_two_seeds(tmp_path, sst_files, vocab_file, capsys):
    model_dir = tmp_path / "ft"
    result = finetune.run(
        _args(*sst_files, model_dir, vocab_file, "--max_steps=2", "--seeds=2")
    )
    out = capsys.readouterr().out
    assert "encoder starts from random weights" in out
    assert "1 bad row(s)" in out
    assert "over 2 seeds" in out
    assert result["seeds"] == [0, 1] and len(result["runs"]) == 2
    assert 0.0 <= result["accuracy_mean"] <= 1.0 and result["accuracy_std"] >= 0.0
    for seed in (0, 1):
        assert (model_dir / f"seed_{seed}" / finetune.BEST_WEIGHTS_FILE).exists()
    assert (model_dir / finetune.BEST_WEIGHTS_FILE).exists()
    assert (model_dir / finetune.VOCAB_FILE).read_text() == open(vocab_file).read()
    saved = json.loads((model_dir / finetune.EVAL_METRICS_FILE).read_text())
    assert saved["accuracy_mean"] == result["accuracy_mean"]
    cfg = load_resolved(str(model_dir))
    assert cfg.finetune.labels == ("0", "1")
    assert cfg.export.label_names == ("negative", "positive")
    # "auto" is resolved and recorded: what this machine trained in.
    assert cfg.finetune.precision == finetune.resolve_precision("auto", 16)
    assert cfg.finetune.precision in ("float32", "mixed_bfloat16")
    assert cfg.model.vocabulary_size == len(open(vocab_file).read().split())
    dead = (model_dir / "dead_letter_train.jsonl").read_text().splitlines()
    assert [json.loads(d)["reason"] for d in dead] == ["missing-text"]


def _pretraining_dir(tmp_path, vocab_file, hidden_dim=8, *overrides):
    """A pretraining model_dir as model.pretrain writes it."""
    n = len(features.read_vocab(vocab_file))
    cfg = load_config(
        [],
        [
            f"model.vocabulary_size={n}",
            "model.num_layers=1",
            "model.num_heads=2",
            f"model.hidden_dim={hidden_dim}",
            "model.intermediate_dim=16",
            "model.max_sequence_length=32",
            "data.max_seq_length=32",
            "finetune.max_seq_length=32",
            *overrides,
        ],
    )
    path = tmp_path / "pretrain"
    dump_config(cfg, str(path))
    backbone = BertBackbone.from_model_config(cfg.model)
    backbone.save_weights(str(path / ENCODER_WEIGHTS_FILE))
    return str(path), backbone


def test_finetune_from_pretraining_checkpoint(tmp_path, sst_files, vocab_file, capsys):
    ckpt, backbone = _pretraining_dir(tmp_path, vocab_file, hidden_dim=8)
    model_dir = tmp_path / "ft"
    finetune.run(
        _args(
            *sst_files,
            model_dir,
            vocab_file,
            f"--init_checkpoint={ckpt}",
            "--max_steps=1",
            "--learning_rate=1e-12",
        )
    )
    out = capsys.readouterr().out
    assert f"encoder starts from ours checkpoint {ckpt}" in out
    # Pretrained with a sentence task (the default weight 1): BERT's [CLS].
    assert "pooling: cls (BERT's default)" in out
    cfg = load_resolved(str(model_dir))
    assert cfg.finetune.pooling == "cls"
    assert "learning rate:" not in out  # the flag's, not auto's
    assert float(cfg.finetune.learning_rate) == 1e-12
    # Sizes from the checkpoint's config.yaml, not TINY's hidden_dim=16.
    assert cfg.model.hidden_dim == 8
    # The pretrained encoder was loaded (an lr of 1e-12 leaves it unchanged).
    from model.export import load_finetuned

    classifier, _, _ = load_finetuned(str(model_dir))
    np.testing.assert_allclose(
        classifier.backbone.token_embedding.embeddings.numpy(),
        backbone.token_embedding.embeddings.numpy(),
        atol=1e-6,
    )


def test_mlm_only_pretraining_fine_tunes_with_mean_pooling(
    tmp_path, sst_files, vocab_file, capsys
):
    # MLM-only pretraining leaves [CLS] untrained: auto pools the tokens.
    ckpt, _ = _pretraining_dir(
        tmp_path, vocab_file, 8, "pretrain.sentence_loss_weight=0.0"
    )
    args = _args(*sst_files, tmp_path / "ft", vocab_file, f"--init_checkpoint={ckpt}")
    finetune.run(args + ["--max_steps=1"])
    out = capsys.readouterr().out
    assert "pooling: mean (" in out
    cfg = load_resolved(str(tmp_path / "ft"))
    assert cfg.finetune.pooling == "mean"
    # No --learning_rate: auto's rate for a width-8 encoder, said and recorded.
    assert "learning rate: 0.0003 (auto for an encoder of width 8" in out
    assert "peak lr 0.0003" in out
    assert float(cfg.finetune.learning_rate) == 3e-4
    # An explicit choice is kept.
    finetune.run(args + ["--max_steps=1", "--overwrite", "--set=finetune.pooling=cls"])
    assert "pooling: cls (finetune.pooling)" in capsys.readouterr().out
    assert load_resolved(str(tmp_path / "ft")).finetune.pooling == "cls"


def test_records_made_for_another_length_stop_before_training(
    tmp_path, sst_files, vocab_file
):
    # (Fine-tuning *on* records runs in tests/model/test_export.py.)
    from pipelines import classification_data

    records = tmp_path / "records"
    classification_data.run(
        [
            f"--input={sst_files[0]}",
            f"--vocab={vocab_file}",
            f"--output_dir={records}",
            "--max_seq_length=16",
        ]
    )
    args = _args(str(records), sst_files[1], tmp_path / "ft", vocab_file)
    with pytest.raises(ConfigError, match="max_seq_length is 16 in the records"):
        finetune.run(args + ["--set=finetune.max_seq_length=24"])
    other_vocab = tmp_path / "other_vocab.txt"
    other_vocab.write_text(open(vocab_file).read() + "extra\n")
    with pytest.raises(ConfigError, match="vocab_size is"):
        finetune.run(args + [f"--vocab={other_vocab}"])
    # A shard cut short (a writer killed mid-file) is named before training.
    shard = sorted(records.glob("classification-*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(ConfigError, match=f"{shard}.*cut-short record"):
        finetune.run(args)


def test_label_sets_that_differ_stop_with_one_line(tmp_path, vocab_file):
    train = _write_tsv(tmp_path / "t.tsv", [("good", "pos"), ("bad", "neg")])
    dev = _write_tsv(tmp_path / "d.tsv", [("good", "positive"), ("bad", "neg")])
    args = _args(train, dev, tmp_path / "ft", vocab_file, "--set=finetune.labels=[]")
    with pytest.raises(ConfigError, match="label sets differ between train"):
        finetune.run(args)


def test_no_usable_rows_and_bad_flags(tmp_path, sst_files, vocab_file):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"sentence": "x"}\n{broken\n')
    with pytest.raises(ConfigError, match="no usable rows"):
        finetune.run(_args(str(empty), sst_files[1], tmp_path / "ft", vocab_file))
    with pytest.raises(ConfigError, match="not in the header.*finetune.text_column="):
        finetune.run(
            _args(
                *sst_files, tmp_path / "ft", vocab_file, "--set=finetune.text_column=x"
            )
        )
    with pytest.raises(
        ConfigError, match="holds no checkpoint; expected our pretraining"
    ):
        finetune.run(
            _args(
                *sst_files, tmp_path / "ft", vocab_file, f"--init_checkpoint={tmp_path}"
            )
        )
    with pytest.raises(ConfigError, match="unknown flag"):
        finetune.run(_args(*sst_files, tmp_path / "ft", vocab_file, "--epoch=3"))


# === Faults and bad inputs (issue 12) ===
def _prepare(tmp_path, train, dev, vocab_file, *overrides, max_bad_fraction=0.1):
    cfg = load_config(["configs/finetune/sst2.yaml"], list(TINY) + list(overrides))
    vocab = features.read_vocab(vocab_file)
    return text_data.prepare_data(
        cfg,
        train_path=train,
        eval_path=dev,
        vocab=vocab,
        vocab_path=vocab_file,
        out_dir=str(tmp_path),
        max_bad_fraction=max_bad_fraction,
    )


def test_three_class_file_against_two_labels_stops(tmp_path, vocab_file):
    rows = [(f"{GOOD[i % 4]} {i}", i % 3) for i in range(30)]
    train = _write_tsv(tmp_path / "t.tsv", rows)
    dev = _write_tsv(tmp_path / "d.tsv", [("good", 1), ("bad", 0)])
    with pytest.raises(ConfigError) as e:
        _prepare(tmp_path, train, dev, vocab_file)
    message = str(e.value)
    assert "10 of 30 rows are bad" in message and "--max_bad_fraction=0.1" in message
    assert "labels outside finetune.labels [0, 1]: 2" in message
    dead = (tmp_path / "dead_letter_train.jsonl").read_text().splitlines()
    assert len(dead) == 10  # the dead letter is written before stopping
    # A raised ceiling takes the file; the third class is counted as bad.
    data = _prepare(tmp_path, train, dev, vocab_file, max_bad_fraction=0.5)
    assert data.num_train == 20 and data.num_bad == {"train": 10, "eval": 0}


def test_labels_outside_the_config_name_the_setting(tmp_path, vocab_file):
    train = _write_tsv(tmp_path / "t.tsv", [("good", "pos"), ("bad", "neg")])
    dev = _write_tsv(tmp_path / "d.tsv", [("good", "pos"), ("bad", "neg")])
    with pytest.raises(
        ConfigError,
        match=r"none of its labels \(neg, pos\) is in "
        r"finetune.labels \[0, 1\].*--set finetune.labels=neg,pos",
    ):
        _prepare(tmp_path, train, dev, vocab_file)
    data = _prepare(tmp_path, train, dev, vocab_file, "finetune.labels=neg,pos")
    assert data.labels == ["neg", "pos"]


@pytest.mark.parametrize("fmt", ["tsv", "csv"])
def test_row_cut_by_a_quoted_newline_leaves_no_tail(tmp_path, fmt):
    sep = "\t" if fmt == "tsv" else ","
    path = tmp_path / f"t.{fmt}"
    path.write_text(
        f"sentence{sep}label\n"
        f"a good film{sep}1\n"
        f'"a row cut\nby a newline in quotes"{sep}0\n'
        f'he said " wow{sep}1\n'  # an unbalanced quote in one whole row
        f"bad movie{sep}0\n"
    )
    rows = text_data.read_labelled_file(
        str(path), text_column="sentence", label_column="label"
    )
    texts = rows.texts_a
    assert not any("by a newline" in t for t in texts), texts
    assert "a good film" in texts and "bad movie" in texts
    if fmt == "tsv":  # quoting off: the stray quote stays in the text
        assert 'he said " wow' in texts
    (bad,) = rows.bad
    assert bad["line_number"] == 3 and bad["lines"] == 2
    assert bad["line"] == f'"a row cut\nby a newline in quotes"{sep}0'


def test_truncated_gzip_training_file_is_one_line(tmp_path, sst_files, vocab_file):
    import gzip

    data = open(sst_files[0], "rb").read() * 50
    packed = gzip.compress(data)
    path = tmp_path / "train.tsv.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ConfigError, match=f"{path} cannot be read to its end"):
        _prepare(tmp_path, str(path), sst_files[1], vocab_file)


def test_wrong_kinds_of_paths_are_one_line_exit_2(
    tmp_path, sst_files, vocab_file, capsys
):
    (tmp_path / "afile").write_text("x")
    cases = [
        (_args(*sst_files, tmp_path / "afile", vocab_file), "is a file"),
        (
            _args(str(tmp_path / "nope.tsv"), sst_files[1], tmp_path / "m", vocab_file),
            "does not exist",
        ),
        (_args(*sst_files, tmp_path / "m", str(tmp_path)), "does not exist"),
        (
            _args(*sst_files, tmp_path / "m", vocab_file, "--max_bad_fraction=x"),
            "invalid float",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            finetune.main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
        assert err[0].startswith("error: ") and message in err[0], err


@pytest.mark.slow  # a whole fine-tune + export: ~30 s on a busy 2-core box
def test_finetune_and_export_on_ram_filesystem(tmp_path, sst_files, vocab_file):
    # TensorFlow's in-memory filesystem stands in for gs:// (every file of
    # the run: inputs, vocabulary, model_dir, export).
    import tensorflow as tf

    from model import export

    ram = "ram://finetune_test"
    for local in (*sst_files, vocab_file):
        tf.io.gfile.copy(local, f"{ram}/in/{os.path.basename(local)}", overwrite=True)
    train, dev, vocab = (
        f"{ram}/in/{os.path.basename(p)}" for p in (*sst_files, vocab_file)
    )
    ckpt, _ = _pretraining_dir(tmp_path, vocab_file, hidden_dim=8)
    for name in ("config.yaml", ENCODER_WEIGHTS_FILE):
        tf.io.gfile.copy(f"{ckpt}/{name}", f"{ram}/pretrain/{name}", overwrite=True)
    result = finetune.run(
        _args(
            train,
            dev,
            f"{ram}/ft",
            vocab,
            "--max_steps=1",
            f"--init_checkpoint={ram}/pretrain",
        )
    )
    assert result["init"] == f"ours:{ram}/pretrain"
    assert result["num_train"] == 16
    for name in (
        finetune.BEST_WEIGHTS_FILE,
        "config.yaml",
        "vocab.txt",
        finetune.EVAL_METRICS_FILE,
        finetune.METRICS_LOG_FILE,
        "dead_letter_train.jsonl",
    ):
        assert tf.io.gfile.exists(f"{ram}/ft/{name}"), name
    export.run([f"--model_dir={ram}/ft", f"--export_dir={ram}/serving"])
    assert tf.saved_model.contains_saved_model(f"{ram}/serving")


def test_diverging_finetuning_stops_and_saves_no_best_weights(
    tmp_path, sst_files, vocab_file, capsys
):
    model_dir = tmp_path / "ft"
    argv = _args(
        *sst_files, model_dir, vocab_file, "--max_steps=6", "--learning_rate=1e9"
    )
    with pytest.raises(SystemExit) as e:
        finetune.main(argv + ["--set=finetune.warmup_proportion=0.0"])
    assert e.value.code == 1
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert line.startswith("error: training diverged: loss "), line
    assert "learning rate" in line
    assert not (model_dir / finetune.BEST_WEIGHTS_FILE).exists()
    assert not (model_dir / finetune.EVAL_METRICS_FILE).exists()


def test_finished_run_is_replaced_only_with_overwrite(
    tmp_path, sst_files, vocab_file, capsys
):
    model_dir = tmp_path / "ft"
    argv = _args(*sst_files, model_dir, vocab_file, "--max_steps=1", "--quiet")
    finetune.run(argv)
    before = (model_dir / finetune.EVAL_METRICS_FILE).read_text()
    with pytest.raises(SystemExit) as e:
        finetune.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "holds a finished fine-tuning run" in err and "--overwrite" in err
    assert (model_dir / finetune.EVAL_METRICS_FILE).read_text() == before
    finetune.run(argv + ["--overwrite"])
    assert (model_dir / finetune.EVAL_METRICS_FILE).exists()
