"""Tests for model/export.py and model/predict.py on a tiny fine-tuned model.

One module-scoped model: classification records from the Beam job ->
`model.finetune` (2 steps) -> `model.export`. The SavedModel is then loaded
in fresh processes that import only TensorFlow and tensorflow-text,
through `saved_model_cli` (show, and run: the session-based loader TF
Serving uses), and through `model.predict`.
"""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from configs import features
from configs.schema import ConfigError
from model import export, finetune, predict
from model.text_data import TextPacker, to_model_inputs


def _load_root_conftest():
    # tests/model/conftest.py shadows the name `conftest`; load the root one.
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "conftest.py")
    spec = importlib.util.spec_from_file_location("root_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_vocab_tokens = _load_root_conftest().make_vocab_tokens
MAX_SEQ_LENGTH = 16
TRAIN = [
    ("the movie was good", 1),
    ("a great film", 1),
    ("wonderful wonderful wonderful", 1),
    ("日本語のテキスト and émojis 😀 good", 1),
    ("a terrible movie", 0),
    ("bad film", 0),
    ("not good at all", 0),
    # Longer than MAX_SEQ_LENGTH wordpieces: truncated the same everywhere.
    ("the quick brown fox jumps over the lazy dog and the sea was calm " * 3, 0),
]
ROBUST = [
    "",
    "x" * 100_000,
    "a wonderful film " * 10_000,
    "Ein großartiger Film, très émouvant 😀🎬",
    "日本語のテキスト",
    "good",
]
_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from pipelines import classification_data

    root = tmp_path_factory.mktemp("export")
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(make_vocab_tokens()) + "\n")
    train = root / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in TRAIN))
    dev = root / "dev.tsv"
    dev.write_text("sentence\tlabel\ngood film\t1\nbad movie\t0\n")
    records = root / "records"
    classification_data.run(
        [
            f"--input={train}",
            f"--vocab={vocab_file}",
            f"--output_dir={records}",
            f"--max_seq_length={MAX_SEQ_LENGTH}",
        ]
    )
    model_dir = root / "model"
    result = finetune.run(
        [
            "--config=configs/finetune/sst2.yaml",
            f"--train={records}",
            f"--eval={dev}",
            f"--model_dir={model_dir}",
            f"--vocab={vocab_file}",
            "--max_steps=2",
            "--batch_size=4",
            "--set=model.num_layers=1",
            "--set=model.num_heads=2",
            "--set=model.hidden_dim=16",
            "--set=model.intermediate_dim=32",
            "--set=model.max_sequence_length=32",
            "--set=data.max_seq_length=32",
            f"--set=finetune.max_seq_length={MAX_SEQ_LENGTH}",
        ]
    )
    export_dir = root / "serving"
    export.run([f"--model_dir={model_dir}", f"--export_dir={export_dir}"])
    return {
        "root": root,
        "records": str(records),
        "model_dir": str(model_dir),
        "export_dir": str(export_dir),
        "vocab": make_vocab_tokens(),
        "finetune": result,
    }


def test_finetuned_on_records(exported):
    assert exported["finetune"]["num_train"] == len(TRAIN)
    assert exported["finetune"]["labels"] == ["0", "1"]


def test_weights_are_stored_once(exported):
    """The best weights hold no optimizer slots; the SavedModel holds each
    weight once (Keras 3.15 stored a tracked model's weights twice)."""
    import h5py
    import tensorflow as tf

    classifier, _, _ = export.load_finetuned(exported["model_dir"])
    with h5py.File(os.path.join(exported["model_dir"], "best.weights.h5")) as f:
        assert "optimizer" not in f
    reader = tf.train.load_checkpoint(
        os.path.join(exported["export_dir"], "variables", "variables")
    )
    stored = [
        shape
        for name, shape in reader.get_variable_to_shape_map().items()
        if name.endswith("VARIABLE_VALUE")
    ]
    assert sorted(map(tuple, stored)) == sorted(
        tuple(w.shape) for w in classifier.weights
    )


_FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # registers the tokenizer ops
    loaded = tf.saved_model.load(sys.argv[1])
    serve = loaded.signatures["serving_default"]
    texts = json.loads(open(sys.argv[2]).read())
    out = serve(text=tf.constant(texts))
    one = serve(text=tf.constant(["good"]))
    many = serve(text=tf.constant(["a good film %d" % i for i in range(3000)]))
    print(json.dumps({
        "label": out["label"].numpy().tolist(),
        "label_dtype": out["label"].dtype.name,
        "probabilities": out["probabilities"].numpy().tolist(),
        "probabilities_dtype": out["probabilities"].dtype.name,
        "one_shape": one["probabilities"].shape.as_list(),
        "many_shape": many["probabilities"].shape.as_list(),
        "many_label_shape": many["label"].shape.as_list(),
        "many_finite": bool(tf.reduce_all(tf.math.is_finite(many["probabilities"]))),
        "project_modules": sorted(
            m for m in sys.modules if m.split(".")[0] in ("model", "configs", "pipelines")
        ),
    }))
    """)


def test_fresh_process_matches_keras_and_is_robust(exported, tmp_path):
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(ROBUST))
    script = tmp_path / "load.py"
    script.write_text(_FRESH_PROCESS)
    proc = subprocess.run(
        [sys.executable, str(script), exported["export_dir"], str(texts_file)],
        capture_output=True,
        text=True,
        env=_ENV,
        cwd=str(tmp_path),  # not the repo: the project is not importable
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["project_modules"] == []
    assert got["label_dtype"] == "int64" and got["probabilities_dtype"] == "float32"
    assert got["one_shape"] == [1, 2]
    assert got["many_shape"] == [3000, 2] and got["many_label_shape"] == [3000]
    assert got["many_finite"]
    probabilities = np.asarray(got["probabilities"])
    assert probabilities.shape == (len(ROBUST), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # The served model equals the Keras model fed by the shared packer.
    classifier, cfg, vocab = export.load_finetuned(exported["model_dir"])
    packer = TextPacker(vocab, cfg.data.do_lower_case, MAX_SEQ_LENGTH)
    logits = classifier(to_model_inputs(packer(tf.constant(ROBUST))), training=False)
    expected = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-5)
    assert got["label"] == np.argmax(expected, axis=1).tolist()


def test_saved_model_cli_show(exported):
    show = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "saved_model_cli"),
            "show",
            "--all",
            "--dir",
            exported["export_dir"],
        ],
        capture_output=True,
        text=True,
        env=_ENV,
        timeout=300,
    )
    assert show.returncode == 0, show.stderr[-3000:]
    serving = show.stdout.split("signature_def['serving_default']")[1]
    serving = serving.split("signature_def[")[0]
    assert "inputs['text']" in serving and "DT_STRING" in serving
    assert "outputs['label']" in serving and "DT_INT64" in serving
    assert "outputs['probabilities']" in serving and "shape: (-1, 2)" in serving


@pytest.mark.slow
def test_saved_model_cli_run_session_loader(exported):
    # `saved_model_cli run` loads through a TF1 Session (TF Serving's loader).
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, tensorflow_text\n"
            "from tensorflow.python.tools import saved_model_cli\n"
            "sys.argv[0] = 'saved_model_cli'\n"
            "saved_model_cli.main()",
            "run",
            "--dir",
            exported["export_dir"],
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            "text=['a good film', '', 'bad']",
        ],
        capture_output=True,
        text=True,
        env=_ENV,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Result for output key label:" in run.stdout
    assert "Result for output key probabilities:" in run.stdout


def _read_records(records_dir):
    specs = features.feature_lengths("classification", MAX_SEQ_LENGTH)
    spec = {k: tf.io.FixedLenFeature([n], tf.int64) for k, (_, n) in specs.items()}
    files = tf.io.gfile.glob(os.path.join(records_dir, "*.tfrecord"))
    return [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files)]


def test_tokenizer_parity_with_the_data_job(exported):
    loaded = tf.saved_model.load(exported["export_dir"])
    packed = loaded.signatures[export.TOKENIZE_SIGNATURE](
        text=tf.constant([t for t, _ in TRAIN])
    )

    def rows(ids, mask, segments):
        return sorted(
            (tuple(i), tuple(m), tuple(s))
            for i, m, s in zip(ids.tolist(), mask.tolist(), segments.tolist())
        )

    served = rows(
        packed["input_ids"].numpy(),
        packed["input_mask"].numpy(),
        packed["segment_ids"].numpy(),
    )
    records = _read_records(exported["records"])
    from_job = rows(
        np.stack([r["input_ids"].numpy() for r in records]),
        np.stack([r["input_mask"].numpy() for r in records]),
        np.stack([r["segment_ids"].numpy() for r in records]),
    )
    assert served == from_job
    # The long row really was truncated, ending in [SEP].
    sep = exported["vocab"].index("[SEP]")
    assert any(r[1] == (1,) * MAX_SEQ_LENGTH and r[0][-1] == sep for r in served)


def test_predict_cli_arguments_and_stdin(exported):
    out = io.StringIO()
    n = predict.run(
        [f"--saved_model={exported['export_dir']}", "a good film", "bad"], stdout=out
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert n == {"classified": 2, "failed": 0}
    assert [r["text"] for r in lines] == ["a good film", "bad"]
    for r in lines:
        assert r["label"] in (0, 1) and len(r["probabilities"]) == 2
        assert r["label_name"] == ["negative", "positive"][r["label"]]
        assert r["label_value"] == str(r["label"])
    out = io.StringIO()
    n = predict.run(
        [f"--saved_model={exported['export_dir']}", "--batch_size=2"],
        stdin=io.StringIO("one\ntwo\n\nfour\nfive\n"),
        stdout=out,
    )
    texts = [json.loads(line)["text"] for line in out.getvalue().splitlines()]
    assert n["classified"] == 5 and texts == ["one", "two", "", "four", "five"]


def test_predict_answers_every_decodable_line(exported):
    # One undecodable byte costs its own line only (it used to cost them all).
    out = io.StringIO()
    stdin = io.BytesIO(b"a good film\nbad \xff movie\n\xc3\nnot good\n")
    n = predict.run(
        [f"--saved_model={exported['export_dir']}", "--batch_size=2"],
        stdin=stdin,
        stdout=out,
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert n == {"classified": 2, "failed": 2}
    assert [r.get("text") for r in lines] == ["a good film", None, None, "not good"]
    assert lines[1]["line"] == 2 and "not valid UTF-8" in lines[1]["error"]
    assert lines[2]["line"] == 3


@pytest.mark.slow
def test_predict_cli_undecodable_stdin(exported):
    # The real command, real bytes on its stdin: exit 1, the rest answered.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "model.predict",
            f"--saved_model={exported['export_dir']}",
        ],
        input=b"a good film\n\xff\xfe\nbad\n",
        capture_output=True,
        env=_ENV,
    )
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    assert [r.get("text") for r in lines] == ["a good film", None, "bad"]
    assert lines[1] == {"line": 2, "error": lines[1]["error"]}
    err = proc.stderr.decode().strip().splitlines()
    assert err[-1].startswith("error: 1 line(s) could not be classified")


def test_predict_given_a_directory_that_is_not_a_saved_model(
    exported, tmp_path, capsys
):
    for target, message in (
        (exported["model_dir"], "is not a SavedModel"),
        (str(tmp_path / "missing"), "is not a directory"),
    ):
        with pytest.raises(SystemExit) as e:
            predict.main([f"--saved_model={target}", "x"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err
    with pytest.raises(SystemExit) as e:
        predict.main([f"--saved_model={exported['export_dir']}", "--batch_size=0"])
    assert e.value.code == 2


def test_export_wrong_paths_are_one_line(exported, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for argv, message in (
        ([f"--model_dir={tmp_path}/missing"], "is not a directory"),
        (
            [f"--model_dir={exported['model_dir']}", f"--export_dir={tmp_path}/afile"],
            "is a file",
        ),
        ([f"--model_dir={exported['model_dir']}"], "--export_dir"),
    ):
        if not any(a.startswith("--export_dir") for a in argv):
            argv = argv + (
                [f"--export_dir={tmp_path}/out"] if "missing" in argv[0] else []
            )
        with pytest.raises(SystemExit) as e:
            export.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err


def test_predict_and_export_on_ram_filesystem(exported):
    # TensorFlow's in-memory filesystem stands in for gs://.
    ram = "ram://predict_test"
    export.run([f"--model_dir={exported['model_dir']}", f"--export_dir={ram}/serving"])
    out = io.StringIO()
    n = predict.run([f"--saved_model={ram}/serving", "a good film"], stdout=out)
    assert n["classified"] == 1
    assert json.loads(out.getvalue())["label_name"] in ("negative", "positive")


def test_export_refuses_an_unfinished_model_dir(tmp_path):
    from configs.schema import ConfigError

    with pytest.raises(ConfigError):
        export.run([f"--model_dir={tmp_path}", f"--export_dir={tmp_path}/out"])


def test_export_is_renamed_into_place_and_clears_killed_exports(exported, tmp_path):
    serving = tmp_path / "serving"
    killed = tmp_path / "serving.tmp-dead0000"  # what a killed export leaves
    (killed / "variables").mkdir(parents=True)
    import shutil

    shutil.copytree(exported["export_dir"], serving)  # an earlier export
    (serving / "stale.txt").write_text("from the earlier export")
    with pytest.raises(ConfigError, match="--overwrite"):
        export.run([f"--model_dir={exported['model_dir']}", f"--export_dir={serving}"])
    export.run(
        [
            f"--model_dir={exported['model_dir']}",
            f"--export_dir={serving}",
            "--overwrite",
        ]
    )
    assert not (serving / "stale.txt").exists()  # replaced whole
    assert sorted(os.listdir(tmp_path)) == ["serving"]
    assert tf.saved_model.contains_saved_model(str(serving))
    out = io.StringIO()
    assert predict.run([f"--saved_model={serving}", "good"], stdout=out) == {
        "classified": 1,
        "failed": 0,
    }


def test_nan_weights_are_refused_by_export_and_never_printed(exported, tmp_path):
    import shutil

    from model import training

    # A fine-tuning run whose weights went NaN (as a diverged run's would).
    model_dir = tmp_path / "diverged"
    shutil.copytree(exported["model_dir"], model_dir)
    classifier, cfg, vocab = export.load_finetuned(str(model_dir))
    weight = classifier.weights[0]
    weight.assign(np.full(weight.shape, np.nan, weight.dtype))
    training.save_weights_atomic(classifier, str(model_dir / "best.weights.h5"))
    with pytest.raises(ConfigError, match="holds NaN or infinite values"):
        export.run([f"--model_dir={model_dir}", f"--export_dir={tmp_path}/x"])
    assert not (tmp_path / "x").exists()
    # Such a SavedModel (written past the check) never makes predict print NaN.
    serving = export.export_classifier(
        classifier,
        str(tmp_path / "nan_serving"),
        vocab=vocab,
        do_lower_case=True,
        max_seq_length=16,
        labels=["0", "1"],
    )
    out = io.StringIO()
    counts = predict.run([f"--saved_model={serving}", "a good film"], stdout=out)
    assert counts == {"classified": 0, "failed": 1}
    (line,) = [json.loads(l) for l in out.getvalue().splitlines()]
    assert line["line"] == 1 and "non-finite probabilities" in line["error"]


def test_export_from_an_unfinished_finetuning_run_says_so(exported, tmp_path):
    import shutil

    model_dir = tmp_path / "killed"
    shutil.copytree(exported["model_dir"], model_dir)
    os.remove(model_dir / finetune.EVAL_METRICS_FILE)
    with pytest.raises(ConfigError, match="fine-tuning run did not finish"):
        export.run([f"--model_dir={model_dir}", f"--export_dir={tmp_path}/x"])


def test_predict_label_name_is_null_without_names(exported, tmp_path):
    import shutil

    serving = tmp_path / "serving"
    shutil.copytree(exported["export_dir"], serving)
    labels = serving / "assets.extra" / "labels.json"
    info = json.loads(labels.read_text())
    labels.write_text(json.dumps(dict(info, label_names=[])))
    out = io.StringIO()
    predict.run([f"--saved_model={serving}", "good"], stdout=out)
    assert json.loads(out.getvalue())["label_name"] is None


def test_export_past_a_file_size_limit_is_one_line_and_leaves_nothing(
    exported, tmp_path, capsys
):
    # EFBIG for real: saved_model.pb (~1 MiB) cannot be written past 64 KiB.
    from testdata import file_size_limit

    serving = tmp_path / "out" / "serving"
    argv = [f"--model_dir={exported['model_dir']}", f"--export_dir={serving}"]
    with file_size_limit(64 * 1024), pytest.raises(SystemExit) as e:
        export.main(argv)
    assert e.value.code == 1
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert line.startswith(f"error: file too large writing {serving}; "), line
    assert "ulimit -f" in line and "no cut export left" in line
    assert os.listdir(tmp_path / "out") == []  # no cut dir, no temp, no lock
