"""Tests for pipelines/batch_predict.py: pure parts, transforms, handler, job.

One tiny fine-tuned model per module: `model.finetune` (1 step, float32,
L1/H16 on the shipped vocabulary) -> `model.export`. The job itself never
imports `model/`; only this fixture does.
"""

import gzip
import json
import os
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from configs import labelled_text
from configs.metrics import classification_metrics
from pipelines import batch_predict as bp
from pipelines import (
    evaluate_predictions,
    prediction_rows,
    saved_model_handler,
    score_texts,
)
from pipelines import options

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
VOCAB = os.path.join(ROOT, "data", "vocab.txt")
MAX_SEQ_LENGTH = 16
TRAIN = [
    ("a good film", 1),
    ("a great and wonderful movie", 1),
    ("i loved it", 1),
    ("a bad film", 0),
    ("a terrible and boring movie", 0),
    ("i hated it", 0),
]
DEV = [
    ("good film", "1"),
    ("bad movie", "0"),
    ("wonderful", "1"),
    ("boring , terrible , bad", "0"),
    ("the sea was calm and the sky was blue", "1"),
    ("not good at all", "0"),
]
LONG = " ".join(["the film was good and the actors were wonderful ."] * 6)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """{"serving": export dir, "accuracy": model.finetune's eval accuracy}."""
    from model import export, finetune

    root = tmp_path_factory.mktemp("batch_predict_model")
    train, dev = root / "train.tsv", root / "dev.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in TRAIN))
    dev.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in DEV))
    result = finetune.run(
        [
            "--config=configs/finetune/sst2.yaml",
            f"--train={train}",
            f"--eval={dev}",
            f"--model_dir={root / 'model'}",
            f"--vocab={VOCAB}",
            "--max_steps=1",
            "--batch_size=4",
            "--quiet",
            "--set=model.num_layers=1",
            "--set=model.num_heads=2",
            "--set=model.hidden_dim=16",
            "--set=model.intermediate_dim=32",
            "--set=model.max_sequence_length=32",
            "--set=data.max_seq_length=32",
            "--set=finetune.precision=float32",
            f"--set=finetune.max_seq_length={MAX_SEQ_LENGTH}",
            f"--set=export.max_seq_length={MAX_SEQ_LENGTH}",
        ]
    )
    serving = str(root / "serving")
    export.run([f"--model_dir={root / 'model'}", f"--export_dir={serving}"])
    return {"serving": serving, "accuracy": result["accuracy_mean"], "dev": str(dev)}


def _argv(model, inputs, out, *extra):
    return [
        f"--saved_model={model['serving']}",
        f"--input={inputs}",
        f"--output_dir={out}",
        *extra,
    ]


def _predictions(out):
    rows = []
    for name in sorted(os.listdir(out)):
        if name.startswith(bp.PREDICTIONS_PREFIX):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(os.path.join(out, name), "rt", encoding="utf-8") as f:
                rows.extend(json.loads(line) for line in f)
    return rows


def _dead_letters(out):
    with open(os.path.join(out, bp.DEAD_LETTER_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# === Pure functions ===
def _check_spans(word_starts, max_pieces, stride):
    spans = saved_model_handler.window_spans(word_starts, max_pieces, stride)
    n = len(word_starts)
    assert spans[0][0] == 0 and spans[-1][1] == n
    covered = set()
    for (a, b), following in zip(spans, spans[1:] + [None]):
        assert 0 < b - a <= max_pieces
        covered.update(range(a, b))
        if following:
            assert a < following[0] <= b  # moves forward, no gap
            assert word_starts[following[0]] or following[0] == b
    assert covered == set(range(n))
    return spans


def test_window_spans_short_text_is_one_window():
    assert saved_model_handler.window_spans([True] * 5, 8, 4) == [(0, 5)]
    assert saved_model_handler.window_spans([], 8, 4) == [(0, 0)]


def test_window_spans_cut_at_word_boundaries():
    #            w  ##  w  ##  ##  w  w  ##  w  w
    starts = [1, 0, 1, 0, 0, 1, 1, 0, 1, 1]
    spans = _check_spans([bool(s) for s in starts], 4, 2)
    assert spans == [(0, 2), (2, 6), (5, 9), (8, 10)]
    for a, b in spans:
        assert starts[a] and (b == len(starts) or starts[b])


def test_window_spans_random_properties():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 80)
        starts = [True] + [rng.random() < 0.6 for _ in range(n - 1)]
        max_pieces = rng.randint(1, 12)
        _check_spans(starts, max_pieces, rng.randint(1, max_pieces))


def test_window_spans_word_longer_than_window_is_cut():
    spans = _check_spans([True] + [False] * 9, 4, 2)
    assert spans == [(0, 4), (4, 8), (8, 10)]  # no word start to move back to


def test_parse_record_keeps_fields_in_order():
    ok, (fields, text, _, label) = labelled_text.parse_record(
        b"1\tA film .\tx",
        fmt="tsv",
        columns=["label", "sentence", "id"],
        text_column="sentence",
        label_column="label",
    )
    assert ok == "ok" and list(fields) == ["label", "sentence", "id"]
    assert (text, label) == ("A film .", "1")
    ok, (fields, text, _, label) = labelled_text.parse_record(
        b'{"id": 7, "text": "fine", "meta": {"a": 1}}',
        fmt="jsonl",
        columns=[],
        text_column="text",
    )
    assert fields == {"id": 7, "text": "fine", "meta": {"a": 1}} and label is None
    ok, (fields, text, _, _) = labelled_text.parse_record(
        b"  just text\r", fmt="text", columns=[], text_column="text"
    )
    assert fields == {"text": "  just text"} and text == "just text"
    assert labelled_text.parse_record(
        b"\t0", fmt="tsv", columns=["sentence", "label"], text_column="sentence"
    ) == ("bad", labelled_text.BAD_MISSING_TEXT)
    assert labelled_text.detect_input_format("a/b.txt.gz") == "text"
    assert labelled_text.detect_input_format("a/b.jsonl.gz") == "jsonl"


def test_format_prediction_renames_clashing_fields():
    out = score_texts.format_prediction(
        {"sentence": "s", "label": "1", "probabilities": "x"},
        1,
        np.array([0.25, 0.75], np.float32),
        ["0", "1"],
        ["negative", "positive"],
    )
    assert list(out) == [
        "sentence",
        "input_label",
        "input_probabilities",
        "label",
        "label_name",
        "label_value",
        "probabilities",
    ]
    assert out["label_name"] == "positive" and out["probabilities"] == [0.25, 0.75]
    assert (
        score_texts.format_prediction({"t": "s"}, 0, [1.0, 0.0], ["a", "b"], [])[
            "label_name"
        ]
        is None
    )


def test_metrics_per_class_by_hand():
    m = classification_metrics([[3, 1], [2, 4]], ["neg", "pos"], ["N", "P"])
    assert m["accuracy"] == 0.7
    assert m["per_class"]["neg"] == {
        "name": "N",
        "precision": 0.6,
        "recall": 0.75,
        "f1": pytest.approx(2 / 3),
        "support": 4,
    }
    assert m["per_class"]["pos"]["recall"] == pytest.approx(4 / 6)


# === Transforms ===
def test_evaluate_predictions_combiner():
    elements = [(0, "0", 0, "a"), (0, "0", 1, "b"), (1, "1", 1, "c")] * 10 + [
        (None, "neutral", 1, f"text {i:02d}") for i in range(30)
    ]
    with TestPipeline() as p:
        metrics = (
            p
            | beam.Create(elements, reshuffle=True)
            | evaluate_predictions.EvaluatePredictions(
                labels=["0", "1"], label_names=["n", "p"]
            )
        )

        def check(results):
            (m,) = results
            assert m["count"] == 30 and m["confusion_matrix"] == [[10, 10], [0, 10]]
            assert m["accuracy"] == pytest.approx(20 / 30)
            assert m["unknown_labels"] == {"neutral": 30}
            assert m["rows_with_unknown_label"] == 30
            assert [e["text"] for e in m["unknown_label_examples"]] == [
                f"text {i:02d}" for i in range(evaluate_predictions._UNKNOWN_EXAMPLES)
            ]

        assert_that(metrics, check)


def test_parse_rows_transform_and_counters():
    lines = [
        ("f.tsv", b"a fine film\t1"),
        ("f.tsv", b""),
        ("f.tsv", b"   "),
        ("f.tsv", b"\xff\xfe bytes\t1"),
        ("f.tsv", b"too\tmany\tfields"),
        ("f.tsv", b"no label\t"),
        ("f.tsv", b"x" * 101 + b"\t0"),
    ]
    p = TestPipeline()
    parsed = (
        p
        | beam.Create(lines)
        | prediction_rows.ParseRows(
            fmt="tsv",
            columns=["sentence", "label"],
            text_column="sentence",
            label_column="label",
            max_line_bytes=100,
        )
    )
    assert_that(
        parsed["rows"],
        equal_to([(({"sentence": "a fine film", "label": "1"}, "1"), "a fine film")]),
        label="Rows",
    )
    assert_that(
        parsed["bad"] | beam.Map(lambda d: (d["reason"], d["file"])),
        equal_to(
            [
                (labelled_text.BAD_UNDECODABLE, "f.tsv"),
                (labelled_text.BAD_COLUMNS, "f.tsv"),
                (labelled_text.BAD_MISSING_LABEL, "f.tsv"),
                (prediction_rows.BAD_TOO_LONG, "f.tsv"),
            ]
        ),
        label="Bad",
    )
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter())["counters"]
        if c.key.metric.namespace == prediction_rows.PARSE_NAMESPACE
    }
    assert (
        counters[prediction_rows.ROWS_READ] == 7
        and counters[prediction_rows.ROWS_BLANK] == 2
    )
    assert counters[prediction_rows.BAD_TOO_LONG] == 1


# === The handler ===
def test_handler_scores_like_serving_default(model):
    import tensorflow as tf

    handler = saved_model_handler.SavedModelTextHandler(
        model["serving"], min_batch_size=1, max_batch_size=2
    )
    loaded = handler.load_model()
    texts = ["good film", "bad movie", "", LONG, "日本語 😀"]
    results = list(handler.run_inference(texts, loaded))
    assert [r.example for r in results] == texts
    served = (
        tf.saved_model.load(model["serving"])
        .signatures["serving_default"](text=tf.constant(texts))["probabilities"]
        .numpy()
    )
    for r, expected in zip(results, served):
        np.testing.assert_allclose(r.inference["probabilities"], expected, atol=1e-6)
        assert r.inference["windows"] == 1
    assert [r.inference["truncated"] for r in results] == [0, 0, 0, 1, 0]
    assert handler.batch_elements_kwargs() == {
        "min_batch_size": 1,
        "max_batch_size": 2,
    }
    assert handler.get_num_bytes(["ab", "é"]) == 4


def test_handler_average_scores_windows(model):
    handler = saved_model_handler.SavedModelTextHandler(
        model["serving"], long_text="average"
    )
    loaded = handler.load_model()
    (windows,) = loaded.windows([LONG], stride=loaded.max_pieces // 2)
    other = "Ünïcode CAFÉ " + LONG.upper()
    assert loaded.windows([other, "good", LONG], stride=7) == [
        loaded.windows([t], stride=7)[0] for t in (other, "good", LONG)
    ]
    assert len(windows) > 2 and all(w in LONG for w in windows)
    assert max(loaded.lengths(windows)) <= loaded.max_pieces
    short, long_ = handler.run_inference(["good film", LONG], loaded)
    truncating = saved_model_handler.SavedModelTextHandler(model["serving"])
    short_t, long_t = truncating.run_inference(["good film", LONG], loaded)
    np.testing.assert_allclose(
        short.inference["probabilities"], short_t.inference["probabilities"], atol=1e-6
    )
    assert long_.inference["windows"] == len(windows)
    assert not long_.inference["truncated"] and long_t.inference["truncated"]
    by_window = [
        r.inference["probabilities"] for r in truncating.run_inference(windows, loaded)
    ]
    np.testing.assert_allclose(
        long_.inference["probabilities"], np.mean(by_window, axis=0), atol=1e-6
    )


# === The job ===
def test_job_scores_evaluates_and_keeps_bad_rows(model, tmp_path):
    dev = open(model["dev"], encoding="utf-8").read()
    data = tmp_path / "rows.tsv"
    bad = [
        b"\xff\xfe undecodable\t1\n",
        b"extra\tfields\there\n",
        b"\t1\n",
        b"no label here\t\n",
        b"x" * (prediction_rows.DEFAULT_MAX_LINE_BYTES + 1) + b"\t1\n",
    ]
    data.write_bytes(
        dev.encode()
        + b"\n   \n"
        + b"".join(bad)
        + b"a neutral film\tneutral\n"
        + f"{LONG}\t1\n".encode()
    )
    out = tmp_path / "out"
    summary = bp.run(_argv(model, data, out, "--label_column=label"))
    rows_in = len(DEV) + 2 + len(bad) + 2
    assert summary["rows_read"] == rows_in
    assert summary["rows_predicted"] == len(DEV) + 2
    assert summary["rows_blank"] == 2 and summary["rows_dead_letter"] == len(bad)
    assert summary["texts_truncated"] == 1
    predictions = _predictions(out)
    assert len(predictions) == len(DEV) + 2
    assert all(
        list(r) == ["sentence", "input_label", *score_texts.OUTPUT_FIELDS]
        for r in predictions
    )
    assert sorted(r["sentence"] for r in predictions) == sorted(
        [t for t, _ in DEV] + ["a neutral film", LONG]
    )
    dead = _dead_letters(out)
    assert sorted(d["reason"] for d in dead) == sorted(
        [
            labelled_text.BAD_UNDECODABLE,
            labelled_text.BAD_COLUMNS,
            labelled_text.BAD_MISSING_TEXT,
            labelled_text.BAD_MISSING_LABEL,
            prediction_rows.BAD_TOO_LONG,
        ]
    )
    assert all(d["file"].endswith("rows.tsv") for d in dead)
    metrics = json.load(open(out / bp.METRICS_FILE))
    assert metrics["count"] == len(DEV) + 1  # DEV + the long row
    assert metrics["unknown_labels"] == {"neutral": 1}
    assert (out / bp.CONFUSION_PNG).read_bytes()[:4] == b"\x89PNG"
    assert json.load(open(out / bp.SUMMARY_FILE)) == summary


def test_job_accuracy_equals_finetune(model, tmp_path):
    summary = bp.run(
        _argv(model, model["dev"], tmp_path / "out", "--label_column=label")
    )
    assert summary["evaluation"]["accuracy"] == model["accuracy"]


def test_job_jsonl_gz_text_and_gzip_output(model, tmp_path):
    jsonl = tmp_path / "rows.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as f:
        f.write('{"id": 1, "text": "good film"}\n{"id": 2}\n[1]\n')
        f.write('{"id": 3, "text": "bad", "label": "x"}\n')
    out = tmp_path / "out"
    summary = bp.run(_argv(model, jsonl, out, "--compression=gzip"))
    assert (summary["rows_read"], summary["rows_predicted"]) == (4, 2)
    assert [list(r) for r in sorted(_predictions(out), key=lambda r: r["id"])] == [
        ["id", "text", *score_texts.OUTPUT_FIELDS],
        ["id", "text", "input_label", *score_texts.OUTPUT_FIELDS],
    ]
    assert all(n.endswith(".jsonl.gz") for n in summary["shards"])
    text = tmp_path / "a.txt"
    text.write_text("good film\n\nbad movie\n")
    summary = bp.run(
        _argv(model, f"{text},{text}", tmp_path / "text", "--long_text=average")
    )
    assert summary["rows_predicted"] == 2 and summary["rows_blank"] == 1
    assert {r["text"] for r in _predictions(tmp_path / "text")} == {
        "good film",
        "bad movie",
    }


def test_overwrite_replaces_only_our_files(model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions-00000-of-00009.jsonl").write_text("stale\n")
    (out / "notes.txt").write_text("keep me")
    text = tmp_path / "a.txt"
    text.write_text("good film\n")
    bp.run(_argv(model, text, out, "--overwrite"))
    names = sorted(os.listdir(out))
    assert "notes.txt" in names and "predictions-00000-of-00009.jsonl" not in names
    assert len(_predictions(out)) == 1


def test_rerun_after_a_kill_clears_what_it_left(model, tmp_path, capsys):
    # What a SIGKILLed run leaves: Beam's temp directories (named by the
    # sink: beam-temp-<file name>-<uuid>), our temp files, and shards under
    # final names when the kill came while Beam renamed them; no summary.
    out = tmp_path / "out"
    for name in ("predictions", "dead_letter.jsonl", "metrics.json"):
        piece = out / f"beam-temp-{name}-0123456789abcdef" / "f00d-part"
        piece.parent.mkdir(parents=True)
        piece.write_text("cut")
    (out / "summary.json.tmp-4242").write_text("{")
    (out / "predictions-00001-of-00002.jsonl").write_text('{"cut": \n')
    (out / "notes.txt").write_text("keep me")
    text = tmp_path / "a.txt"
    text.write_text("good film\n")
    summary = bp.run(_argv(model, text, out))  # the same flags, no --overwrite
    note = [l for l in capsys.readouterr().out.splitlines() if l.startswith("note:")]
    assert len(note) == 1 and "5 piece(s) that an interrupted run left" in note[0]
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.startswith("beam-temp-") or ".tmp-" in n]
    assert "predictions-00001-of-00002.jsonl" not in names and "notes.txt" in names
    assert summary["rows_predicted"] == 1 and len(_predictions(out)) == 1
    # A finished run is kept unless --overwrite.
    with pytest.raises(options.UsageError, match="--overwrite"):
        bp.run(_argv(model, text, out))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--input": "{tmp}/nothing*.tsv"}, "matches no file"),
        ({"--saved_model": "{tmp}"}, "not a SavedModel"),
        ({"--saved_model": "{tmp}/other"}, "not a model.export SavedModel"),
        ({"--saved_model": "{tmp}/damaged"}, "saved_model.pb cannot be read"),
        ({"--output_dir": "{tmp}/earlier"}, "earlier predictions.*--overwrite"),
        ({"--text_column": "review"}, "'review' is not in the header"),
        ({"--max_batch_size": "0"}, "min_batch_size"),
        ({"--label_column": "sentence"}, "must differ"),
        ({"--runner_typo": "x"}, "unknown flag"),
        ({"--input": "{tmp}/damaged"}, "is a directory; pass a glob"),
        (
            {"--input": "{tmp}/inside/*.tsv", "--output_dir": "{tmp}/inside"},
            "inside --output_dir",
        ),
    ],
)
def test_bad_flags_one_line(model, tmp_path, capsys, change, message):
    import tensorflow as tf

    if "{tmp}/other" in change.values():

        class Other(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
            def serve(self, x):
                return {"y": x}

        other = Other()
        tf.saved_model.save(
            other, str(tmp_path / "other"), signatures={"serving_default": other.serve}
        )
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "saved_model.pb").write_bytes(b"\xff not a proto")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / bp.SUMMARY_FILE).write_text("{}")
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "rows.tsv").write_text("sentence\tlabel\ngood\t1\n")
    flags = dict(a.split("=", 1) for a in _argv(model, model["dev"], tmp_path / "o"))
    flags.update({k: v.format(tmp=tmp_path) for k, v in change.items()})
    with pytest.raises(SystemExit) as e:
        bp.main([f"{k}={v}" for k, v in flags.items()])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert __import__("re").search(message, err[0]), err[0]


def test_no_usable_row_fails_with_one_line(model, tmp_path, capsys):
    data = tmp_path / "bad.tsv"
    data.write_bytes(b"sentence\tlabel\n\xff\t1\n\n")
    with pytest.raises(SystemExit) as e:
        bp.main(_argv(model, data, tmp_path / "out"))
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no row could be scored" in err[-1]
    assert len(_dead_letters(tmp_path / "out")) == 1


def test_dataflow_dry_run_builds_the_job(model, tmp_path):
    pytest.importorskip("apache_beam.runners.dataflow")
    settings, opts = bp.parse(
        _argv(model, model["dev"], tmp_path / "out", "--label_column=label")
        + [
            "--runner=DataflowRunner",
            "--dry_run=True",
            "--project=my-project",
            "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp",
            f"--setup_file={os.path.abspath(os.path.join(ROOT, 'setup.py'))}",
        ]
    )
    result = bp.run_pipeline(settings, opts)
    names = {
        t.unique_name for t in result.job.proto_pipeline.components.transforms.values()
    }
    for stage in (
        "ReadRows",
        "ParseRows/Parse",
        "ScoreTexts/RunInference",
        "FormatPredictions",
        "WritePredictions",
        "WriteDeadLetters",
        "Evaluate/ConfusionMatrix",
        "WriteMetrics",
    ):
        assert stage in names, stage
    assert not (tmp_path / "out").exists()


class _CountingHandler(saved_model_handler.SavedModelTextHandler):
    loads = 0

    def load_model(self):
        type(self).loads += 1
        return super().load_model()


def test_model_loaded_once_for_all_threads(model):
    from apache_beam.options.pipeline_options import PipelineOptions

    _CountingHandler.loads = 0
    texts = [f"film number {i}" for i in range(200)]
    opts = PipelineOptions(
        ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    )
    with TestPipeline(options=opts) as p:
        scored = (
            p
            | beam.Create([(t, t) for t in texts], reshuffle=True)
            | score_texts.ScoreTexts(
                _CountingHandler(model["serving"], min_batch_size=1)
            )
            | beam.Map(lambda kv: kv[0])
        )
        assert_that(scored, equal_to(texts))
    assert _CountingHandler.loads == 1


@pytest.mark.slow
def test_job_on_prism_equals_direct_runner(model, tmp_path):
    """The same rows, predictions and metrics from Prism as from DirectRunner
    (RunInference's batching and the model handler in Prism's workers)."""
    prism = os.path.join(ROOT, ".engines", "bin", "prism")
    if not os.path.exists(prism):
        pytest.skip(f"prism engine not installed ({prism}): run `make engines`")
    runs = {}
    for name, flags in (
        ("direct", ["--runner=DirectRunner"]),
        (
            "prism",
            [
                "--runner=PrismRunner",
                f"--prism_location={prism}",
                # DirectRunner's own try of Prism stays cached in-process.
                "--experiments=disable_prism_server_singleton",
            ],
        ),
    ):
        out = tmp_path / name
        summary = bp.run(
            _argv(model, model["dev"], out, "--label_column=label", *flags)
        )
        rows = sorted(json.dumps(r, sort_keys=True) for r in _predictions(out))
        runs[name] = (rows, json.load(open(out / bp.METRICS_FILE)), summary)
    assert runs["prism"][0] == runs["direct"][0]
    assert runs["prism"][1] == runs["direct"][1]
    for key in ("rows_read", "rows_predicted", "rows_dead_letter", "rows_blank"):
        assert runs["prism"][2][key] == runs["direct"][2][key], key
