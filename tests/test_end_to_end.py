"""One smoke test through the whole chain, on a ten-line corpus.

raw text -> `pipelines.pretraining_data` (DirectRunner) -> `model.pretrain`
(2 steps, tiny model) -> `model.finetune` (1 step, from that checkpoint)
-> `model.export` -> the SavedModel reloaded in a fresh process that
imports only TensorFlow and tensorflow-text.
"""

import json
import os
import subprocess
import sys

from model import export, finetune, pretrain
from pipelines import pretraining_data

TEN_LINES = """\
The quick brown fox jumps over the lazy dog.
It was not amused by the fox at all.
The dog went back to sleep under the old tree.

A second document starts here.
It talks about the weather and the sea.
The sea was calm and the sky was blue.

Short third document with two lines.
This is the second line of it.
Boats sailed out of the harbor in the morning.
They came back at night with many fish.
"""

TINY_MODEL = [
    "--set=model.num_layers=1",
    "--set=model.num_heads=2",
    "--set=model.hidden_dim=16",
    "--set=model.intermediate_dim=32",
    "--set=model.max_sequence_length=32",
    "--set=model.dropout=0.0",
]


def test_raw_text_to_served_predictions(tmp_path, vocab_file, vocab_tokens):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEN_LINES)
    records = tmp_path / "records"
    pretraining_data.run(
        [
            f"--input={corpus}",
            f"--vocab={vocab_file}",
            f"--output_dir={records}",
            "--max_seq_length=32",
            "--max_predictions_per_seq=5",
            "--dupe_factor=2",
            "--num_shards=1",
        ]
    )
    pretrain_dir = tmp_path / "pretrain"
    pretrain.run(
        [
            f"--data={records}",
            f"--model_dir={pretrain_dir}",
            "--steps=2",
            "--batch_size=4",
            "--warmup_steps=1",
            "--log_every=1",
            "--save_every=2",
            "--precision=float32",
            "--jit_compile=false",
            f"--set=model.vocabulary_size={len(vocab_tokens)}",
            "--set=data.max_seq_length=32",
            "--set=data.max_predictions_per_seq=5",
            "--set=finetune.max_seq_length=32",
            "--set=pretrain.shuffle_buffer=8",
        ]
        + TINY_MODEL
    )
    # The run found the vocabulary through the records' metadata.json and
    # carries a copy, so fine-tuning needs no --vocab.
    assert (pretrain_dir / "vocab.txt").read_text() == open(vocab_file).read()
    train = tmp_path / "train.tsv"
    train.write_text(
        "sentence\tlabel\na good film\t1\na bad film\t0\ngreat\t1\nterrible\t0\n"
    )
    model_dir = tmp_path / "sst"
    result = finetune.run(
        [
            "--config=configs/finetune/sst2.yaml",
            f"--train={train}",
            f"--eval={train}",
            f"--model_dir={model_dir}",
            f"--init_checkpoint={pretrain_dir}",
            "--max_steps=1",
            "--batch_size=4",
            "--set=finetune.max_seq_length=32",
        ]
    )
    assert result["runs"][0]["steps"] == 1
    export_dir = tmp_path / "serving"
    export.run([f"--model_dir={model_dir}", f"--export_dir={export_dir}"])

    script = (
        "import json, sys\n"
        "import tensorflow as tf, tensorflow_text\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = serve(text=tf.constant(['a good film', '', 'the sea 🌊']))\n"
        "print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(export_dir)],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["label"]) == 3 and set(out["label"]) <= {0, 1}
    assert [len(p) for p in out["probabilities"]] == [2, 2, 2]
    for p in out["probabilities"]:
        assert all(0.0 <= x <= 1.0 for x in p) and abs(sum(p) - 1.0) < 1e-5
