"""End to end: pretraining_data.run on DirectRunner, bad flags, bad data,
determinism, Dataflow dry run, PortableRunner LOOPBACK."""

import glob
import json
import os
import random
import struct

import numpy as np
import pytest
import tensorflow as tf

from configs import features, metadata
from testdata import CORPUS_TEXT
from pipelines import options, pretraining_data, sentence_pairs, text

SEQ, PRED = 32, 5


def _argv(corpus, vocab, out, *extra):
    return [
        f"--input={corpus}",
        f"--vocab={vocab}",
        f"--output_dir={out}",
        f"--max_seq_length={SEQ}",
        f"--max_predictions_per_seq={PRED}",
        "--dupe_factor=3",
        "--num_shards=2",
        "--seed=7",
        *extra,
    ]


def read_records(directory):
    """Raw record bytes of every shard (TFRecord framing), sorted."""
    out = []
    for path in glob.glob(os.path.join(directory, "pretraining-*.tfrecord")):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            out.append(data[i + 12 : i + 12 + n])
            i += 16 + n
    return sorted(out)


def bert_spec(seq, pred):
    """google-research/bert run_pretraining.py's name_to_features."""
    return {
        "input_ids": tf.io.FixedLenFeature([seq], tf.int64),
        "input_mask": tf.io.FixedLenFeature([seq], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([seq], tf.int64),
        "masked_lm_positions": tf.io.FixedLenFeature([pred], tf.int64),
        "masked_lm_ids": tf.io.FixedLenFeature([pred], tf.int64),
        "masked_lm_weights": tf.io.FixedLenFeature([pred], tf.float32),
        "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
    }


@pytest.fixture
def vocab_ids(vocab_tokens):
    return features.special_token_ids(vocab_tokens)


def test_end_to_end_records_and_metadata(tmp_path, corpus_file, vocab_file, vocab_ids):
    out = str(tmp_path / "out")
    meta = pretraining_data.run(_argv(corpus_file, vocab_file, out))
    assert set(metadata.PRETRAINING_KEYS) <= set(meta)
    assert meta == json.load(open(os.path.join(out, "metadata.json")))
    assert os.path.exists(os.path.join(out, "config.yaml"))
    files = sorted(glob.glob(os.path.join(out, "pretraining-*")))
    assert [os.path.basename(f) for f in files] == [
        "pretraining-00000-of-00002.tfrecord",
        "pretraining-00001-of-00002.tfrecord",
    ]
    ds = tf.data.TFRecordDataset(files).map(
        lambda r: tf.io.parse_single_example(r, bert_spec(SEQ, PRED))
    )
    records = [{k: v.numpy() for k, v in x.items()} for x in ds]
    assert len(records) == meta["num_examples"] > 10
    assert meta["num_shards"] == 2 and meta["vocab_size"] > 50
    labels = [int(r["next_sentence_labels"][0]) for r in records]
    assert set(labels) == {0, 1}
    assert meta["label_counts"] == {"0": labels.count(0), "1": labels.count(1)}
    specials = set(vocab_ids.values())
    for r in records:
        n = int(r["input_mask"].sum())
        ids = r["input_ids"]
        assert ids[0] == vocab_ids["[CLS]"] and ids[n - 1] == vocab_ids["[SEP]"]
        assert not ids[n:].any() and r["input_mask"][:n].all()
        m = int(r["masked_lm_weights"].sum())
        pos = r["masked_lm_positions"][:m]
        assert list(pos) == sorted(set(pos)) and (pos < n).all() and (pos > 0).all()
        assert not set(r["masked_lm_ids"][:m]) & specials
        seps = np.flatnonzero(ids[:n] == vocab_ids["[SEP]"])
        assert (r["segment_ids"][: seps[0] + 1] == 0).all()
        assert (r["segment_ids"][seps[0] + 1 : n] == 1).all()
    c = meta["counters"]
    assert c["ReadDocuments/documents-read"] == 3
    assert c["WriteTfRecords/records-written"] == len(records)


def test_same_seed_same_records_any_sharding(tmp_path, corpus_file, vocab_file):
    a, b, c = (str(tmp_path / d) for d in "abc")
    pretraining_data.run(_argv(corpus_file, vocab_file, a))
    pretraining_data.run(_argv(corpus_file, vocab_file, b, "--num_shards=3"))
    pretraining_data.run(_argv(corpus_file, vocab_file, c, "--seed=8"))
    assert read_records(a) == read_records(b)
    assert read_records(a) != read_records(c)


def test_bucket_pairing_ignores_element_order(vocab_ids):
    rng = random.Random(0)
    docs = []
    for fp in range(6):
        flat = np.array([rng.randrange(40, 90) for _ in range(60)], np.int32)
        docs.append((fp * 7919, flat, np.arange(6, 61, 6, dtype=np.int32)))
    fn = sentence_pairs._PairBucketFn(
        seed=1,
        special_ids=vocab_ids,
        max_seq_length=24,
        short_seq_prob=0.1,
        sentence_task="nsp",
        dupe_factor=2,
    )
    fn.setup()
    first = list(fn.process((0, docs)))
    second = list(fn.process((0, docs[::-1])))
    assert len(first) == len(second) and sum(len(b.labels) for b in first) > 10
    for x, y in zip(first, second):
        assert x.mask_seed == y.mask_seed
        for field in ("input_ids", "lengths", "num_a", "labels"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))


@pytest.mark.slow
def test_multi_processing_gives_same_records(tmp_path, corpus_file, vocab_file):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    pretraining_data.run(_argv(corpus_file, vocab_file, a))
    pretraining_data.run(
        _argv(
            corpus_file,
            vocab_file,
            b,
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        )
    )
    assert read_records(a) == read_records(b) != []


def test_bad_data_is_counted_not_fatal(tmp_path, vocab_file):
    data = tmp_path / "data"
    data.mkdir()
    (data / "empty.txt").write_bytes(b"")
    (data / "bad.txt").write_bytes(
        b"The dog went back to sleep.\nIt was \xff\xfe not amused.\n\n"
        b"One sentence only.\n\n"
        + b"x" * ((1 << 20) + 1)
        + b"\nThe sea was calm.\nBoats sailed out.\n\n\n\x01\n"
    )
    meta = pretraining_data.run(
        _argv(f"{data}/*.txt", vocab_file, tmp_path / "out", "--sentence_task=sop")
    )
    c = meta["counters"]
    assert c["ReadDocuments/lines-undecodable"] == 1
    assert c["ReadDocuments/lines-dropped-too-long"] == 1
    assert c["TokenizeDocuments/documents-skipped-empty"] == 1
    assert c["CreateSentencePairs/documents-with-one-sentence"] == 1
    assert meta["num_examples"] > 0 and meta["sentence_task"] == "sop"
    assert meta["input_files_empty"] == [str(data / "empty.txt")]


def test_duplicate_documents_are_counted_and_paired_once(tmp_path, vocab_file):
    """Copies of a document (same text, in one file or across files) are
    paired once: each copy would make the same pairs, with "random next"
    sentences drawn from the other copies."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.txt", "b.txt"):
        (data / name).write_text(CORPUS_TEXT + "\n\n" + CORPUS_TEXT, encoding="utf-8")
    meta = pretraining_data.run(_argv(f"{data}/*.txt", vocab_file, tmp_path / "out"))
    c = meta["counters"]
    tokenized = c["TokenizeDocuments/documents-tokenized"]
    assert tokenized % 4 == 0
    assert c["CreateSentencePairs/documents-duplicate-dropped"] == tokenized * 3 // 4
    pairs = read_records(str(tmp_path / "out"))
    assert len(pairs) == meta["num_examples"] > 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--vocab": "{tmp}/missing.txt"}, "does not exist"),
        (
            {"--vocab": "{tmp}/nomask.txt"},
            r"lacks required special token\(s\) \[MASK\]",
        ),
        ({"--masked_lm_prob": "0"}, "masked_lm_prob"),
        ({"--masked_lm_prob": "1.5"}, "masked_lm_prob"),
        ({"--max_seq_length": "7"}, "max_seq_length must be at least 8"),
        ({"--max_predictions_per_seq": "0"}, "max_predictions_per_seq"),
        ({"--max_predictions_per_seq": "30"}, "at most max_seq_length - 3"),
        ({"--max_seq_length": "128"}, "too small"),
        ({"--input": "{tmp}/nothing-*.txt"}, "matches no file"),
        ({"--output_dir": "{tmp}"}, "is not empty"),
        ({"--max_seq_len": "64"}, "unknown flag"),
        ({"--sentence_task": "xyz"}, "invalid choice"),
        ({"--runner": "NoSuchRunner"}, "NoSuchRunner"),
    ],
)
def test_bad_flags_stop_with_one_line(
    tmp_path, capsys, corpus_file, vocab_file, vocab_tokens, change, message
):
    (tmp_path / "nomask.txt").write_text(
        "\n".join(t for t in vocab_tokens if t != "[MASK]") + "\n"
    )
    flags = dict(
        a.split("=", 1) for a in _argv(corpus_file, vocab_file, tmp_path / "o")
    )
    flags.update({k: v.format(tmp=tmp_path) for k, v in change.items()})
    with pytest.raises(SystemExit) as e:
        pretraining_data.main([f"{k}={v}" for k, v in flags.items()])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert __import__("re").search(message, err[0]), err[0]


def test_overwrite_replaces_only_our_files(tmp_path, corpus_file, vocab_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pretraining-00000-of-00009.tfrecord").write_bytes(b"stale")
    (out / "notes.txt").write_text("keep me")
    pretraining_data.run(_argv(corpus_file, vocab_file, out, "--overwrite"))
    names = sorted(os.listdir(out))
    assert "notes.txt" in names and "pretraining-00000-of-00009.tfrecord" not in names


@pytest.mark.parametrize("held_out", [False, True], ids=["plain", "eval_documents"])
def test_dataflow_dry_run_builds_the_job(tmp_path, corpus_file, vocab_file, held_out):
    pytest.importorskip("apache_beam.runners.dataflow")
    setup_py = os.path.join(os.path.dirname(__file__), "..", "..", "setup.py")
    extra = ["--eval_documents=2"] if held_out else []
    settings, opts = options.parse(
        _argv(corpus_file, vocab_file, tmp_path / "out", *extra)
        + [
            "--runner=DataflowRunner",
            "--dry_run=True",
            "--project=my-project",
            "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp",
            f"--setup_file={os.path.abspath(setup_py)}",
        ]
    )
    result = pretraining_data.run_pipeline(settings, opts)
    names = {
        t.unique_name for t in result.job.proto_pipeline.components.transforms.values()
    }
    for stage in (
        "ReadCorpus",
        "Tokenize/Tokenize",
        "CreatePairs/GroupBuckets",
        "CreatePairs/PairSentences",
        "Mask/Mask",
        "Write/WritePieces",
        "Write/Concatenate",
    ):
        assert stage in names
    held_out_stages = (
        "HoldOutDocuments/ReadForHashes",
        "HoldOutDocuments/SmallestHashes",
        "HoldOutDocuments/Split",
        "HeldOut/Tokenize/Tokenize",
        "HeldOut/CreatePairs/PairSentences",
        "HeldOut/Write/Concatenate",
    )
    assert all((stage in names) == held_out for stage in held_out_stages), names


def test_portable_runner_loopback(tmp_path, corpus_file, vocab_file):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    pretraining_data.run(_argv(corpus_file, vocab_file, a))
    meta = pretraining_data.run(
        _argv(
            corpus_file,
            vocab_file,
            b,
            "--runner=PortableRunner",
            "--job_endpoint=embed",
            "--environment_type=LOOPBACK",
        )
    )
    assert read_records(a) == read_records(b)
    assert meta["num_examples"] == len(read_records(b))


def test_whole_word_mask_sop_gzip_records_parse(tmp_path, corpus_file, vocab_file):
    out = str(tmp_path / "out")
    meta = pretraining_data.run(
        _argv(
            corpus_file,
            vocab_file,
            out,
            "--whole_word_mask",
            "--sentence_task=sop",
            "--compression=gzip",
            "--random_tokens=any",
        )
    )
    files = sorted(glob.glob(os.path.join(out, "pretraining-*.tfrecord.gz")))
    assert len(files) == 2 and meta["whole_word_mask"] is True
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
        lambda r: tf.io.parse_single_example(r, bert_spec(SEQ, PRED))
    )
    labels = [int(x["next_sentence_labels"][0]) for x in ds]
    assert len(labels) == meta["num_examples"] and set(labels) == {0, 1}


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_bucket_rows_equal_create_pairs_packed(vocab_ids, task):
    """The Beam path (spans gathered from one id pool) builds the same rows
    as the readable path (`create_pairs` + `pack_pair`) for every document."""
    rng = random.Random(3)
    docs = []
    for fp in range(5):
        ends = np.cumsum(
            [rng.choice([1, 2, 5, 9, 30]) for _ in range(rng.randint(1, 12))]
        )
        flat = np.array([rng.randrange(40, 90) for _ in range(ends[-1])], np.int32)
        docs.append((fp * 7919 + 1, flat, ends.astype(np.int32)))
    params = dict(max_seq_length=24, short_seq_prob=0.2, sentence_task=task)
    fn = sentence_pairs._PairBucketFn(
        seed=9, special_ids=vocab_ids, dupe_factor=1, **params
    )
    fn.setup()
    got = list(fn.process((0, docs)))
    cls_id, sep_id = vocab_ids[features.CLS], vocab_ids[features.SEP]
    sentences = [
        [flat[s:e].tolist() for s, e in zip([0, *ends[:-1]], ends)]
        for _, flat, ends in docs
    ]
    want = []
    for i, (fp, _, _) in enumerate(docs):
        pairs = sentence_pairs.create_pairs(
            sentences[i],
            sentences[:i] + sentences[i + 1 :],
            text.make_rng(9, fp, 0),
            **params,
        )
        want += [sentence_pairs.pack_pair(p, cls_id, sep_id) for p in pairs]
    rows = [
        (b.input_ids[r, : b.lengths[r]].tolist(), int(b.num_a[r]))
        for b in got
        for r in range(len(b.lengths))
    ]
    assert rows == want and len(rows) > 5
    assert all(
        (b.input_ids[r, b.lengths[r] :] == 0).all()
        for b in got
        for r in range(len(b.lengths))
    )


def _main_error(capsys, argv):
    """Runs the entry point; returns (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as e:
        pretraining_data.main([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n   \n\n", b"x" * ((1 << 20) + 10) + b"\n"],
    ids=["empty-file", "blank-lines", "one-over-long-line"],
)
def test_no_instances_fails_with_one_line_and_commits_nothing(
    tmp_path, capsys, vocab_file, content
):
    corpus = tmp_path / "in.txt"
    corpus.write_bytes(content)
    out = tmp_path / "out"
    code, err = _main_error(capsys, _argv(corpus, vocab_file, out))
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: no pretraining instances from"), err
    assert "0 pair(s) made" in err[0]
    assert os.listdir(out) == []  # no shards, no metadata.json


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_gzip_is_an_error_naming_the_file(
    tmp_path, capsys, corpus_file, vocab_file, damage
):
    import gzip

    text = open(corpus_file, "rb").read() * 200  # several deflate blocks
    packed = bytearray(gzip.compress(text))
    path = tmp_path / "corpus.txt.gz"
    if damage == "truncated":
        packed = packed[: len(packed) // 2]  # what `head -c` does
    else:
        packed[len(packed) // 2 : len(packed) // 2 + 16] = b"\x00" * 16
    path.write_bytes(bytes(packed))
    code, err = _main_error(capsys, _argv(path, vocab_file, tmp_path / "out"))
    assert code == 1 and len(err) == 1, err
    assert f"input {path} cannot be read to its end" in err[0], err
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_output_dir_that_is_a_file_stops_before_work(
    tmp_path, capsys, corpus_file, vocab_file
):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        code, err = _main_error(capsys, _argv(corpus_file, vocab_file, out))
        assert code == 2 and len(err) == 1 and "is a file" in err[0], err
    # Beam has no filesystem for TensorFlow's ram:// (nor for a typo'd scheme).
    for flag in ("output_dir", "vocab", "input"):
        argv = [
            f"--{flag}=ram://x/y" if a.startswith(f"--{flag}=") else a
            for a in _argv(corpus_file, vocab_file, tmp_path / "o")
        ]
        code, err = _main_error(capsys, argv)
        assert code == 2 and len(err) == 1 and "ram://x/y" in err[0], err


def test_any_run_clears_pieces_of_an_interrupted_run(tmp_path, corpus_file, vocab_file):
    # What a run killed mid-write leaves: a temp dir of pieces and a temp shard.
    out = tmp_path / "out"
    leftover = out / ".temp-pieces-0123abcd"
    leftover.mkdir(parents=True)
    (leftover / "00000-ff.piece").write_bytes(b"\x00" * 1000)
    (leftover / "shard-ff-pretraining-00000-of-00002.tfrecord").write_bytes(b"cut")
    meta = pretraining_data.run(_argv(corpus_file, vocab_file, out))  # no --overwrite
    assert meta["num_examples"] > 0
    assert sorted(os.listdir(out)) == [
        "config.yaml",
        "metadata.json",
        "pretraining-00000-of-00002.tfrecord",
        "pretraining-00001-of-00002.tfrecord",
    ]


# === --eval_documents: whole documents held out into OUTPUT_DIR/eval/ ===


def _doc_ids(lines, vocab_tokens):
    """A document's WordPiece ids, its sentences back to back."""
    from configs import tokenization

    tokenizer = tokenization.build_tokenizer(vocab_tokens, True)
    return tokenizer.tokenize(tf.constant(lines)).flat_values.numpy().tolist()


def _segments(directory):
    """Segments A and B of every record, with the masked tokens restored."""
    files = sorted(glob.glob(os.path.join(directory, "pretraining-*.tfrecord")))
    ds = tf.data.TFRecordDataset(files).map(
        lambda r: tf.io.parse_single_example(r, bert_spec(SEQ, PRED))
    )
    out = []
    for r in ds:
        r = {k: v.numpy() for k, v in r.items()}
        ids = r["input_ids"].copy()
        m = int(r["masked_lm_weights"].sum())
        ids[r["masked_lm_positions"][:m]] = r["masked_lm_ids"][:m]
        n, a = int(r["input_mask"].sum()), int((r["segment_ids"] == 0).sum())
        n_a = a - (SEQ - n)  # [CLS] A [SEP]
        out.append(ids[1 : n_a - 1].tolist())
        out.append(ids[n_a : n - 1].tolist())
    return out


def _within(segment, doc):
    """True when `segment` is a contiguous run of `doc`'s ids."""
    return f" {' '.join(map(str, segment))} " in f" {' '.join(map(str, doc))} "


def test_eval_documents_holds_whole_documents_out(
    tmp_path, corpus_file, vocab_file, vocab_tokens
):
    from configs.schema import ConfigError
    from pipelines import holdout, inspect

    out, again = str(tmp_path / "out"), str(tmp_path / "again")
    meta = pretraining_data.run(
        _argv(corpus_file, vocab_file, out, "--eval_documents=1")
    )
    docs = [d.splitlines() for d in CORPUS_TEXT.strip().split("\n\n")]
    # The held-out document is the one with the smallest seeded hash.
    held = min(docs, key=lambda d: holdout.hold_out_hash(7, text.fingerprint(d)))
    held_ids = _doc_ids(held, vocab_tokens)
    kept_ids = [_doc_ids(d, vocab_tokens) for d in docs if d is not held]
    evals = _segments(os.path.join(out, "eval"))
    trains = _segments(out)
    assert evals and trains
    # Every held-out segment comes from the held-out document, and no
    # training segment does: nothing of it leaks into training.
    assert all(_within(s, held_ids) for s in evals)
    assert not any(_within(s, d) for s in evals for d in kept_ids)
    assert all(any(_within(s, d) for d in kept_ids) for s in trains)
    assert not any(_within(s, held_ids) for s in trains)

    # Each split has its own committed metadata, valid for the checks.
    eval_meta = metadata.read_metadata(os.path.join(out, "eval"))
    assert metadata.held_out_split(out) == os.path.join(out, "eval")
    assert set(metadata.PRETRAINING_KEYS) <= set(eval_meta)
    assert eval_meta["split"] == "eval" and eval_meta["held_out_documents"] == 1
    assert eval_meta["num_examples"] == len(evals) // 2
    assert eval_meta["num_shards"] == 2 and eval_meta["eval_documents"] == 1
    assert eval_meta["counters"]["WriteTfRecords/records-written"] == len(evals) // 2
    assert os.path.exists(os.path.join(out, "eval", "config.yaml"))
    written = json.load(open(os.path.join(out, "metadata.json")))
    assert written["split"] == "train" and written["held_out_documents"] == 1
    assert written["eval_dir"] == "eval"
    assert written["eval_num_examples"] == eval_meta["num_examples"]
    assert written["num_examples"] == meta["num_examples"] == len(trains) // 2
    c = written["counters"]
    assert c["HoldOutDocuments/documents-held-out"] == 1
    assert c["HoldOutDocuments/documents-kept-for-training"] == 2
    assert c["WriteTfRecords/records-written"] == written["num_examples"]
    for m in (written, eval_meta):
        metadata.check_compatible(
            m,
            kind="pretraining",
            max_seq_length=SEQ,
            max_predictions_per_seq=PRED,
            vocabulary_size=len(vocab_tokens),
            vocab_sha256=features.vocab_sha256(vocab_file),
        )
    with pytest.raises(ConfigError):  # the checks still bite
        metadata.check_compatible(eval_meta, kind="pretraining", max_seq_length=64)
    # Readers of OUTPUT_DIR never count the held-out shards as training's.
    stats = inspect.run([out, "--num_instances=0"])
    assert stats["records_read"] == written["num_examples"]
    assert stats["held_out_split"] == os.path.join(out, "eval")

    # Same seed, other sharding: the same split and the same records.
    pretraining_data.run(
        _argv(corpus_file, vocab_file, again, "--eval_documents=1", "--num_shards=3")
    )
    assert read_records(os.path.join(again, "eval")) == read_records(
        os.path.join(out, "eval")
    )
    assert read_records(again) == read_records(out)

    # A rerun without held-out documents clears the old split: no stale
    # held-out records beside new training ones.
    pretraining_data.run(_argv(corpus_file, vocab_file, out, "--overwrite"))
    assert not os.path.exists(os.path.join(out, "eval"))
    assert metadata.held_out_split(out) is None


def _many_documents(path, n, seed=0):
    """A corpus of `n` short documents of the test vocabulary's words."""
    from testdata import WORDS

    rng = random.Random(seed)
    docs = [
        "\n".join(" ".join(rng.choices(WORDS, k=6)) + " ." for _ in range(3))
        for _ in range(n)
    ]
    path.write_text("\n\n".join(docs) + "\n")
    return [d.splitlines() for d in docs]


def test_eval_fraction_is_honoured_on_a_real_job(tmp_path, vocab_file):
    from pipelines import holdout

    corpus = tmp_path / "many.txt"
    docs = _many_documents(corpus, 200)
    out = tmp_path / "out"
    meta = pretraining_data.run(
        _argv(corpus, vocab_file, out, "--eval_documents=0.2", "--dupe_factor=1")
    )
    bound = holdout.fraction_bound(0.2)
    expected = sum(holdout.hold_out_hash(7, text.fingerprint(d)) < bound for d in docs)
    assert abs(expected - 40) < 4 * 6  # binomial(200, 0.2): sd 5.7
    assert meta["held_out_documents"] == expected
    assert meta["counters"]["HoldOutDocuments/documents-kept-for-training"] == (
        200 - expected
    )
    eval_meta = metadata.read_metadata(str(out / "eval"))
    assert eval_meta["held_out_documents"] == expected
    assert eval_meta["eval_documents"] == 0.2 and eval_meta["num_examples"] > 0


@pytest.mark.parametrize(
    "value, message",
    [
        ("-1", "eval_documents -1 is negative"),
        ("1.5", "a fraction must be at least 0 and below 1"),
        ("1.0", "below 1"),
        ("some", "neither a count of documents"),
    ],
)
def test_bad_eval_documents_stop_with_one_line(
    tmp_path, capsys, corpus_file, vocab_file, value, message
):
    argv = _argv(corpus_file, vocab_file, tmp_path / "o", f"--eval_documents={value}")
    code, err = _main_error(capsys, argv)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()  # before any work


def test_eval_documents_that_leave_nothing_fail_with_one_line(
    tmp_path, capsys, corpus_file, vocab_file
):
    out = tmp_path / "out"
    argv = _argv(corpus_file, vocab_file, out, "--eval_documents=3")
    code, err = _main_error(capsys, argv)
    assert code == 1 and len(err) == 1, err
    assert "eval_documents=3 would hold out every document" in err[0], err
    assert "nothing would be left to train on" in err[0]
    assert not (out / "metadata.json").exists()
    assert not (out / "eval" / "metadata.json").exists()
