"""The commands on Hugging Face checkpoints: fine-tune, pretrain, export.

Uses the transformers-written fixtures of `hf_fixtures/` (2 layers, hidden
32, 96 tokens), so each run is a few seconds.
"""

import json
import os
import shutil

import numpy as np
import pytest

from configs import features
from configs.loader import load_resolved
from configs.schema import ConfigError
from model import checkpoints, export, finetune, pretrain
from model.bert_backbone import BertBackbone
from model.bert_classifier import BertClassifier
from model.bert_pretrainer import BertPretrainer, pretraining_losses
from pretraining_records import make_examples, tiny_flags, write_records

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_fixtures")
TOLERANCE = 1e-4
GOOD = ["the movie was good", "a great film", "very good fun", "good good film"]
BAD = ["a boring movie", "bad film", "not good at all", "the film was awful"]


def fixture(name):
    return os.path.join(FIXTURES, name)


@pytest.fixture
def sst(tmp_path):
    def tsv(path, rows):
        path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
        return str(path)

    train = ([(t, 1) for t in GOOD] + [(t, 0) for t in BAD]) * 2
    dev = [(GOOD[0], 1), (BAD[0], 0), (BAD[1], 0), (GOOD[2], 1)]
    return tsv(tmp_path / "train.tsv", train), tsv(tmp_path / "dev.tsv", dev)


def finetune_args(sst, model_dir, init, *extra):
    return [
        "--config=configs/finetune/sst2.yaml",
        f"--train={sst[0]}",
        f"--eval={sst[1]}",
        f"--model_dir={model_dir}",
        f"--init_checkpoint={init}",
        "--set=finetune.max_seq_length=16",
        "--set=export.max_seq_length=16",
        "--set=finetune.batch_size=4",
        "--quiet",
        *extra,
    ]


def probe_inputs(vocab_size=96):
    rng = np.random.RandomState(3)
    ids = rng.randint(5, vocab_size, size=(3, 10)).astype(np.int32)
    ids[:, 0] = 2
    mask = (np.arange(10)[None] < np.array([[10], [7], [4]])).astype(np.int32)
    return {"input_ids": ids * mask, "input_mask": mask, "segment_ids": 0 * ids}


def test_finetune_a_sentence_transformers_checkpoint_then_export_both_ways(
    tmp_path, sst, capsys
):
    """Mean pooling from 1_Pooling, a tokenizer.json-free vocab.txt copy,
    the SavedModel, and the Hugging Face export re-imported exactly."""
    model_dir = tmp_path / "ft"
    finetune.run(
        finetune_args(sst, model_dir, fixture("sentence_transformers"), "--max_steps=2")
    )
    out = capsys.readouterr().out
    assert "pooling: mean (" in out and "1_Pooling/config.json" in out
    assert "Hugging Face BERT checkpoint" in out
    cfg = load_resolved(str(model_dir))
    assert cfg.finetune.pooling == "mean"
    assert cfg.model.hidden_dim == 32 and cfg.model.num_layers == 2
    assert (model_dir / "vocab.txt").read_text() == open(
        fixture("sentence_transformers") + "/vocab.txt"
    ).read()
    classifier, _, _ = export.load_finetuned(str(model_dir))
    assert classifier.pooling == "mean"
    # A mean-pooling classifier has no BertForSequenceClassification form.
    with pytest.raises(ConfigError, match="pools by mean"):
        export.run(
            [
                f"--model_dir={model_dir}",
                f"--export_dir={tmp_path / 'hf'}",
                "--format=huggingface",
            ]
        )


def test_finetuned_classifier_exports_as_bert_for_sequence_classification(
    tmp_path, sst, capsys
):
    model_dir = tmp_path / "ft"
    finetune.run(finetune_args(sst, model_dir, fixture("pretraining"), "--max_steps=2"))
    assert "pooling: cls (BERT's default)" in capsys.readouterr().out
    hf_dir = tmp_path / "hf"
    export.run(
        [f"--model_dir={model_dir}", f"--export_dir={hf_dir}", "--format=huggingface"]
    )
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert sorted(os.listdir(hf_dir)) == sorted(
        [
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ]
    )
    # Re-import: the same logits as our fine-tuned model.
    classifier, _, _ = export.load_finetuned(str(model_dir))
    ckpt = checkpoints.inspect(str(hf_dir))
    again = BertClassifier(BertBackbone.from_model_config(ckpt.model_config), 2)
    checkpoints.load_backbone(ckpt, again.backbone)
    from model.checkpoints import huggingface

    assert huggingface.load_classifier_head(again, str(hf_dir))
    x = probe_inputs()
    diff = np.max(np.abs(np.asarray(again(x)) - np.asarray(classifier(x))))
    assert diff <= TOLERANCE
    np.savez(tmp_path / "ours.npz", **x, logits=np.asarray(classifier(x)))


def test_finetuned_classifier_exports_as_a_google_tf1_checkpoint(tmp_path, sst):
    import tensorflow as tf

    model_dir = tmp_path / "ft"
    finetune.run(finetune_args(sst, model_dir, fixture("pretraining"), "--max_steps=2"))
    tf1_dir = tmp_path / "tf1"
    export.run([f"--model_dir={model_dir}", f"--export_dir={tf1_dir}", "--format=tf1"])
    assert sorted(os.listdir(tf1_dir)) == sorted(
        [
            "bert_model.ckpt.index",
            "bert_model.ckpt.data-00000-of-00001",
            "bert_config.json",
            "vocab.txt",
        ]
    )
    # Google's names and layouts: q/k/v apart, run_classifier.py's head
    # transposed; its BertConfig.from_json_file reads the config.
    shapes = dict(tf.train.list_variables(str(tf1_dir / "bert_model.ckpt")))
    layer = "bert/encoder/layer_1/attention/self"
    assert [shapes[f"{layer}/{p}/kernel"] for p in ("query", "key", "value")] == [
        [32, 32]
    ] * 3
    assert shapes["output_weights"] == [2, 32] and shapes["output_bias"] == [2]
    assert "cls/predictions/output_bias" not in shapes
    config = json.loads((tf1_dir / "bert_config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)
    assert config["vocab_size"] == len((tf1_dir / "vocab.txt").read_text().split())
    # Re-import through --init_checkpoint's reader: the same logits.
    classifier, _, _ = export.load_finetuned(str(model_dir))
    ckpt = checkpoints.inspect(str(tf1_dir))
    assert ckpt.kind == "tf1"
    again = BertClassifier(BertBackbone.from_model_config(ckpt.model_config), 2)
    checkpoints.load_backbone(ckpt, again.backbone)
    reader = tf.train.load_checkpoint(ckpt.path)
    again(probe_inputs())  # builds the head
    logits = again.get_layer("logits")
    logits.kernel.assign(reader.get_tensor("output_weights").T)
    logits.bias.assign(reader.get_tensor("output_bias"))
    x = probe_inputs()
    diff = np.max(np.abs(np.asarray(again(x)) - np.asarray(classifier(x))))
    assert diff <= 1e-6
    # A second export replaces the first; a directory of other files is kept.
    export.run([f"--model_dir={model_dir}", f"--export_dir={tf1_dir}", "--format=tf1"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files but no bert_config.json"):
        export.run(
            [f"--model_dir={model_dir}", f"--export_dir={other}", "--format=tf1"]
        )
    assert (other / "notes.txt").read_text() == "mine"


def test_a_vocab_of_the_same_size_but_other_tokens_is_refused(tmp_path, sst):
    """Issue 19 #9: same size, two ids swapped -> one line naming the id."""
    tokens = features.read_vocab(fixture("bert_model") + "/vocab.txt")
    tokens[10], tokens[11] = tokens[11], tokens[10]
    other = tmp_path / "other_vocab.txt"
    other.write_text("\n".join(tokens) + "\n")
    with pytest.raises(ConfigError) as e:
        finetune.run(
            finetune_args(
                sst, tmp_path / "ft", fixture("bert_model"), f"--vocab={other}"
            )
        )
    assert "is not the checkpoint's" in str(e.value) and "id 10" in str(e.value)
    assert not (tmp_path / "ft").exists()
    # The checkpoint's own vocabulary, given explicitly, is fine.
    same = tmp_path / "same_vocab.txt"
    shutil.copy(fixture("bert_model") + "/vocab.txt", same)
    args = finetune._parse_flags(
        finetune_args(sst, tmp_path / "ft", fixture("bert_model"), f"--vocab={same}")
    )
    finetune.resolve_config(*args)


def test_init_checkpoint_at_a_data_directory_says_what_it_is(tmp_path, sst):
    """Issue 19 #10: a data directory is named as one, with what is expected."""
    data = write_records(tmp_path / "records", num=4)
    with pytest.raises(ConfigError) as e:
        finetune.run(finetune_args(sst, tmp_path / "ft", data))
    message = str(e.value)
    assert "is a data directory" in message and "expected our pretraining" in message
    assert "\n" not in message


def test_init_checkpoint_at_a_finetuning_run_takes_its_encoder(tmp_path, sst, capsys):
    """Issue 19 #10: a fine-tuning run's encoder is accepted, and said so."""
    first = tmp_path / "first"
    finetune.run(finetune_args(sst, first, fixture("bert_model"), "--max_steps=1"))
    capsys.readouterr()
    second = tmp_path / "second"
    finetune.run(
        finetune_args(sst, second, first, "--max_steps=1", "--learning_rate=1e-12")
    )
    out = capsys.readouterr().out
    assert "our fine-tuning run: its encoder" in out
    assert "its classification layer (2 labels) is not" in out
    a, _, _ = export.load_finetuned(str(first))
    b, _, _ = export.load_finetuned(str(second))
    np.testing.assert_allclose(
        a.backbone.token_embedding.embeddings.numpy(),
        b.backbone.token_embedding.embeddings.numpy(),
        atol=1e-6,
    )


def _checkpoint_records(tmp_path, num=8):
    """Records made with the fixture's own vocabulary (as the data job
    would make them for continued pretraining)."""
    vocab = features.read_vocab(fixture("pretraining") + "/vocab.txt")
    return write_records(
        tmp_path / "records", num=num, num_shards=1, vocab_size=96, vocab=vocab
    )


def _flags(data, model_dir, **extra):
    flags = tiny_flags(data, model_dir, **extra)
    # The checkpoint sets the model; the tiny sizes must not survive.
    # No shuffling: the first batch is exactly the 8 records (a shuffle
    # over the repeated stream may draw one twice).
    return [f for f in flags if "--set=model." not in f] + [
        "--set=model.dropout=0.0",
        "--set=pretrain.shuffle_buffer=0",
    ]


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_continued_pretraining_starts_where_the_imported_heads_are(tmp_path, backend):
    """The first step's loss is the imported model's loss on the same batch
    (all 8 records, dropout 0), far below a fresh head's."""
    data = _checkpoint_records(tmp_path)
    model_dir = str(tmp_path / "run")
    flags = _flags(
        data,
        model_dir,
        steps=2,
        batch_size=8,
        log_every=1,
        learning_rate=1e-5,
        masking="static",
    )
    flags.append(f"--init_checkpoint={fixture('pretraining')}")
    if backend == "jax":
        import subprocess
        import sys

        env = dict(os.environ, KERAS_BACKEND="jax")
        run = subprocess.run(
            [sys.executable, "-m", "model.pretrain", *flags],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        out = run.stdout
    else:
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            pretrain.run(flags)
        out = buffer.getvalue()
    assert "model config from Hugging Face BERT checkpoint" in out
    assert "note:" not in out  # BertForPreTraining: every head was there
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    # The imported model's loss on all 8 records, computed directly.
    ckpt = checkpoints.inspect(fixture("pretraining"))
    model = BertPretrainer(BertBackbone.from_model_config(ckpt.model_config))
    checkpoints.load_pretraining_heads(ckpt, model)
    batch = {
        k: np.stack([e[k] for e in make_examples(8, vocab_size=96)])
        for k in make_examples(1)[0]
    }
    outputs = model(
        {
            k: batch[k].astype(np.int32)
            for k in ("input_ids", "input_mask", "segment_ids", "masked_lm_positions")
        }
    )
    expected = pretraining_losses(batch, outputs)
    assert first["loss"] == pytest.approx(float(expected["loss"]), rel=1e-3)
    fresh = BertPretrainer(BertBackbone.from_model_config(ckpt.model_config))
    checkpoints.load_backbone(ckpt, fresh.backbone)
    fresh_loss = float(
        pretraining_losses(
            batch,
            fresh(
                {
                    k: batch[k].astype(np.int32)
                    for k in (
                        "input_ids",
                        "input_mask",
                        "segment_ids",
                        "masked_lm_positions",
                    )
                }
            ),
        )["loss"]
    )
    assert abs(fresh_loss - first["loss"]) > 0.1
    # The run is BERT-shaped like the checkpoint, and exports back out.
    assert load_resolved(model_dir).model.hidden_dim == 32
    hf_dir = tmp_path / "hf"
    export.run(
        [f"--model_dir={model_dir}", f"--export_dir={hf_dir}", "--format=huggingface"]
    )
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]
    again = checkpoints.inspect(str(hf_dir))
    reimported = BertPretrainer(BertBackbone.from_model_config(again.model_config))
    assert checkpoints.load_pretraining_heads(again, reimported) == []
    trained = BertPretrainer(BertBackbone.from_model_config(again.model_config))
    checkpoints.load_pretraining_heads(checkpoints.inspect(model_dir), trained)
    x = {
        **probe_inputs(),
        "masked_lm_positions": np.tile(np.arange(10, dtype=np.int32), (3, 1)),
    }
    for key in ("mlm_logits", "sentence_logits"):
        diff = np.max(
            np.abs(np.asarray(reimported(x)[key]) - np.asarray(trained(x)[key]))
        )
        assert diff <= TOLERANCE, key
    # And as a google-research/bert checkpoint, heads included.
    tf1_dir = tmp_path / "tf1"
    export.run([f"--model_dir={model_dir}", f"--export_dir={tf1_dir}", "--format=tf1"])
    google = checkpoints.inspect(str(tf1_dir))
    from_tf1 = BertPretrainer(BertBackbone.from_model_config(google.model_config))
    assert checkpoints.load_pretraining_heads(google, from_tf1) == []
    for key in ("mlm_logits", "sentence_logits"):
        diff = np.max(
            np.abs(np.asarray(from_tf1(x)[key]) - np.asarray(trained(x)[key]))
        )
        assert diff <= 1e-6, key


def test_records_made_with_another_vocab_are_refused(tmp_path):
    data = write_records(tmp_path / "records", num=4, vocab_size=96)  # tiny tokens
    with pytest.raises(SystemExit) as e:
        pretrain.run(
            _flags(data, str(tmp_path / "run"))
            + [f"--init_checkpoint={fixture('pretraining')}"]
        )
    assert "vocab" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_export_refuses_what_is_not_a_bert_run_of_ours(tmp_path):
    with pytest.raises(ConfigError, match="not a BERT pretraining or fine-tuning run"):
        export.run(
            [
                f"--model_dir={fixture('bert_model')}",
                f"--export_dir={tmp_path / 'x'}",
                "--format=huggingface",
            ]
        )


@pytest.mark.slow  # a fine-tune, an export and a torch process
def test_transformers_loads_our_export_and_gives_our_outputs(tmp_path, sst):
    """Run where a Python with torch + transformers exists (not needed by
    `make test`): BERT_TRANSFORMERS_PYTHON=/path/to/python."""
    python = os.environ.get("BERT_TRANSFORMERS_PYTHON")
    if not python:
        pytest.skip("set BERT_TRANSFORMERS_PYTHON to a Python with transformers")
    import subprocess

    model_dir, hf_dir = tmp_path / "ft", tmp_path / "hf"
    finetune.run(finetune_args(sst, model_dir, fixture("pretraining"), "--max_steps=2"))
    export.run(
        [f"--model_dir={model_dir}", f"--export_dir={hf_dir}", "--format=huggingface"]
    )
    classifier, _, _ = export.load_finetuned(str(model_dir))
    x = probe_inputs()
    np.savez(tmp_path / "ours.npz", **x, logits=np.asarray(classifier(x)))
    script = os.path.join(FIXTURES, "..", "..", "..", "scripts", "check_hf_export.py")
    run = subprocess.run(
        [python, script, str(hf_dir), str(tmp_path / "ours.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "logits: max |diff|" in run.stdout
