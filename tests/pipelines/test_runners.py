"""The data jobs on real engines: Prism, Flink and Spark against DirectRunner.

For the same input and seed every engine must write the same multiset of
records byte for byte and the same vocabulary file, report the same
counters, survive a retried bundle without losing or duplicating a record,
and read and write `gs://` through Beam's GCS filesystem (against a local
GCS emulator, gcp-storage-emulator, on 127.0.0.1).

The engines come from `make engines` (`.engines/`, or `$ENGINES_DIR`);
where one is missing its tests skip with one line naming `make engines`.
The engine tests are slow (each job starts an engine and a worker): they
run with `make test-slow` (`pytest --run_slow`).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
import time

import apache_beam as beam
import pytest

from pipelines import (
    buckets,
    classification_data,
    options,
    pretraining_data,
    tfrecords,
    vocab,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENGINES_DIR = pathlib.Path(os.environ.get("ENGINES_DIR", ROOT / ".engines"))
FLINK_VERSION = "1.20"  # the Makefile's FLINK_VERSION
PRISM = ENGINES_DIR / "bin" / "prism"
GCS_EMULATOR = ENGINES_DIR / "gcs-emulator" / "bin" / "gcp-storage-emulator"
JARS = ENGINES_DIR / "jars"
FLINK_JAR = (
    JARS / f"beam-runners-flink-{FLINK_VERSION}-job-server-{beam.__version__}.jar"
)
SPARK_JAR = JARS / f"beam-runners-spark-3-job-server-{beam.__version__}.jar"
ENGINES = ("prism", "flink", "spark")

SEQ, PRED = 32, 5


def engine_flags(engine: str, spark_master: str = "local[2]") -> list[str]:
    """Beam flags that run a job on `engine`, as a user would pass them;
    skips (one line naming `make engines`) when the engine is not installed."""
    if engine == "direct":
        return ["--runner=DirectRunner"]
    if engine == "bundle_direct":  # Beam's original local runner: retries bundles
        return ["--runner=BundleBasedDirectRunner"]
    needs = {"prism": PRISM, "flink": FLINK_JAR, "spark": SPARK_JAR}[engine]
    if not needs.exists():
        pytest.skip(f"{engine} engine not installed ({needs}): run `make engines`")
    if engine != "prism" and shutil.which("java") is None:
        pytest.skip(f"{engine} needs java on PATH (see `make engines`)")
    if engine == "prism":
        # Beam keeps one Prism job server per process, and DirectRunner's
        # own try of Prism (no binary: a failed download) would be that one.
        return [
            "--runner=PrismRunner",
            f"--prism_location={PRISM}",
            "--experiments=disable_prism_server_singleton",
        ]
    if engine == "flink":
        return [
            "--runner=FlinkRunner",
            "--flink_master=[local]",
            f"--flink_version={FLINK_VERSION}",
            f"--flink_job_server_jar={FLINK_JAR}",
            "--environment_type=LOOPBACK",
            "--parallelism=2",
        ]
    return [
        "--runner=SparkRunner",
        f"--spark_master_url={spark_master}",
        f"--spark_job_server_jar={SPARK_JAR}",
        "--environment_type=LOOPBACK",
    ]


def _pretraining_argv(corpus, vocab_path, out, *extra):
    return [
        f"--input={corpus}",
        f"--vocab={vocab_path}",
        f"--output_dir={out}",
        f"--max_seq_length={SEQ}",
        f"--max_predictions_per_seq={PRED}",
        "--dupe_factor=3",
        "--num_shards=3",
        "--seed=7",
        "--whole_word_mask",
        *extra,
    ]


def read_records(directory) -> list[bytes]:
    """Every record of every `pretraining-*` shard (raw bytes), sorted: the
    multiset of records, whatever shard each landed in."""
    out = []
    for path in sorted(pathlib.Path(directory).glob("pretraining-*.tfrecord")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            out.append(data[i + 12 : i + 12 + n])
            i += 16 + n
    return sorted(out)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny test corpus (conftest), three times over as three files so
    a runner gets more than one read split, each line ending in its file's
    word (identical documents would be paired once), and the inline
    vocabulary."""
    from testdata import CORPUS_TEXT, make_vocab_tokens

    d = tmp_path_factory.mktemp("inputs")
    for i, word in enumerate(["fox", "dog", "sea"]):
        lines = [f"{line} {word}" if line else line for line in CORPUS_TEXT.split("\n")]
        (d / f"corpus-{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    (d / "vocab.txt").write_text("\n".join(make_vocab_tokens()) + "\n")
    (d / "train.tsv").write_text(
        "sentence\tlabel\n"
        + "".join(f"the dog went back {i}\t{i % 2}\n" for i in range(40))
        + "a wonderful film\tnot-a-label\n",
        encoding="utf-8",
    )
    return {
        "corpus": str(d / "corpus-*.txt"),
        "vocab": str(d / "vocab.txt"),
        "tsv": str(d / "train.tsv"),
    }


@pytest.fixture(scope="module")
def direct_pretraining(inputs, tmp_path_factory):
    """DirectRunner's records and metadata: what every engine must match."""
    out = tmp_path_factory.mktemp("direct") / "out"
    meta = pretraining_data.run(
        _pretraining_argv(inputs["corpus"], inputs["vocab"], out)
        + engine_flags("direct")
    )
    return read_records(out), meta


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_pretraining_records_equal_direct_runner(
    engine, inputs, direct_pretraining, tmp_path
):
    records, meta = direct_pretraining
    flags = engine_flags(engine)
    out = tmp_path / engine
    got = pretraining_data.run(
        _pretraining_argv(inputs["corpus"], inputs["vocab"], out) + flags
    )
    assert read_records(out) == records  # byte for byte, as a multiset
    assert got["num_examples"] == meta["num_examples"] == len(records) > 50
    assert got["counters"] == meta["counters"]  # counters reach metadata.json
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_vocab_file_identical(engine, inputs, tmp_path):
    flags = engine_flags(engine)

    def learn(name, extra):
        output = tmp_path / name / "vocab.txt"
        output.parent.mkdir()
        sidecar = vocab.run(
            [
                f"--input={inputs['corpus']}",
                f"--output={output}",
                "--vocab_size=120",
                "--num_unused=2",
                f"--temp_location={tmp_path / name}",
                *extra,
            ]
        )
        return output.read_bytes(), sidecar

    want, want_sidecar = learn("direct", engine_flags("direct"))
    got, got_sidecar = learn(engine, flags)
    assert got == want
    assert got_sidecar["corpus"] == want_sidecar["corpus"]  # counters reached it


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_classification_records_equal_direct_runner(engine, inputs, tmp_path):
    flags = engine_flags(engine)

    def records(name, extra):
        out = tmp_path / name
        meta = classification_data.run(
            [
                f"--input={inputs['tsv']}",
                f"--vocab={inputs['vocab']}",
                f"--output_dir={out}",
                "--labels=0,1",
                "--max_seq_length=16",
                "--num_shards=2",
                "--max_bad_fraction=0.5",
                *extra,
            ]
        )
        return read_tfrecord_dir(out), meta

    want, want_meta = records("direct", engine_flags("direct"))
    got, got_meta = records(engine, flags)
    assert got == want and len(got) == 40
    assert got_meta["num_examples"] == want_meta["num_examples"] == 40
    assert got_meta["bad_rows"] == want_meta["bad_rows"] == {"unknown-label": 1}


def read_tfrecord_dir(directory) -> list[bytes]:
    """Every record of every `*.tfrecord` file under `directory`, sorted."""
    import tensorflow as tf

    files = sorted(str(p) for p in pathlib.Path(directory).glob("*.tfrecord*"))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    return sorted(
        bytes(r.numpy())
        for r in tf.data.TFRecordDataset(files, compression_type=compression)
    )


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["bundle_direct", "spark"])
@pytest.mark.parametrize("stage", ["spill", "pieces"])
def test_retried_bundle_loses_and_duplicates_nothing(
    engine, stage, inputs, direct_pretraining, tmp_path, monkeypatch
):
    """One bundle of a file-writing stage fails after writing its files (a
    test-only switch: the document spill, `buckets.FAIL_ONCE_ENV`, or the
    record pieces, `tfrecords.FAIL_ONCE_ENV`); the runner retries it. The
    records must still equal a clean run's: the failed attempt's files are
    never read, and the retry's are, once. (Prism fails the job on a
    bundle failure instead of retrying; Spark retries with local[N,F].)"""
    flags = engine_flags(engine, spark_master="local[2,3]")
    marker = tmp_path / "failed-once"
    variable = {"spill": buckets.FAIL_ONCE_ENV, "pieces": tfrecords.FAIL_ONCE_ENV}
    monkeypatch.setenv(variable[stage], str(marker))
    records, meta = direct_pretraining
    out = tmp_path / "out"
    got = pretraining_data.run(
        _pretraining_argv(inputs["corpus"], inputs["vocab"], out) + flags
    )
    assert marker.exists(), "the injected failure did not happen"
    assert read_records(out) == records
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    # num_examples is counted in the shards, so it is right even where the
    # runner keeps the failed attempt's counters (BundleBasedDirectRunner).
    assert got["num_examples"] == len(records)


@pytest.mark.slow
def test_prism_does_not_retry_so_the_job_fails_loudly(inputs, tmp_path, monkeypatch):
    """Prism does not retry a failed bundle: the job must fail, not finish
    with the failed bundle's records missing."""
    flags = engine_flags("prism")
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(tfrecords.FAIL_ONCE_ENV, str(marker))
    out = tmp_path / "out"
    with pytest.raises(Exception, match="injected test failure"):
        pretraining_data.run(
            _pretraining_argv(inputs["corpus"], inputs["vocab"], out) + flags
        )
    assert not (out / "metadata.json").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--runner=PrismRunner"], "PrismRunner needs --prism_location=PATH"),
        (
            ["--runner=FlinkRunner", "--flink_job_server_jar=/no/such.jar"],
            "--flink_job_server_jar=/no/such.jar does not exist",
        ),
        (["--runner=SparkRunner"], "SparkRunner needs --spark_job_server_jar=PATH"),
    ],
)
def test_missing_engine_is_one_line_naming_make_engines(
    flags, message, inputs, tmp_path, capsys
):
    """No engine is downloaded when a job starts: one line, exit 2."""
    with pytest.raises(SystemExit) as e:
        pretraining_data.main(
            _pretraining_argv(inputs["corpus"], inputs["vocab"], tmp_path) + flags
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "`make engines`" in err[0]


def test_vocab_job_checks_the_engine_too(inputs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        vocab.main(
            [
                f"--input={inputs['corpus']}",
                f"--output={tmp_path / 'vocab.txt'}",
                "--vocab_size=120",
                "--runner=PrismRunner",
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`make engines`" in err[0]


@pytest.mark.parametrize(
    "flags, timeout",
    [
        (["--runner=PrismRunner", f"--prism_location={sys.executable}"], 604800),
        (["--runner=PortableRunner", "--job_endpoint=localhost:1"], 604800),
        (
            [
                "--runner=PrismRunner",
                f"--prism_location={sys.executable}",
                "--job_server_timeout=42",
            ],
            42,
        ),
        (["--runner=DirectRunner"], 300),
    ],
)
def test_portable_jobs_outlive_beams_default_job_deadline(
    flags, timeout, inputs, tmp_path
):
    """Beam uses --job_server_timeout (300 s) as the running job's stream
    deadline: a Prism job of the 1 GB benchmark died at 5 minutes with
    DEADLINE_EXCEEDED. The jobs lift it unless the user set it."""
    from apache_beam.options.pipeline_options import PortableOptions

    _, pipeline_options = options.parse(
        _pretraining_argv(inputs["corpus"], inputs["vocab"], tmp_path) + flags
    )
    assert pipeline_options.view_as(PortableOptions).job_server_timeout == timeout


# === gs:// against a local GCS emulator ===
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs_emulator(tmp_path):
    """A GCS emulator on 127.0.0.1 with bucket `bkt` (in memory), and the
    environment a process needs to reach it through Beam's GCS filesystem:
    STORAGE_EMULATOR_HOST (honoured by google-cloud-storage) and a
    credentials file holding a fixed token, so google-auth neither probes
    the GCE metadata server nor refreshes anything (its token URL is a
    closed loopback port)."""
    if not GCS_EMULATOR.exists():
        pytest.skip(f"GCS emulator not installed ({GCS_EMULATOR}): run `make engines`")
    port = _free_port()
    server = subprocess.Popen(
        [
            str(GCS_EMULATOR),
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--default-bucket=bkt",
            "--in-memory",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    credentials = tmp_path / "emulator-credentials.json"
    credentials.write_text(
        json.dumps(
            {
                "type": "external_account_authorized_user",
                "audience": "//iam.googleapis.com/locations/global/"
                "workforcePools/emulator/providers/emulator",
                "token": "emulator-token",
                "refresh_token": "unused",
                "token_url": "http://127.0.0.1:9/token",
                "client_id": "emulator",
                "client_secret": "emulator",
            }
        )
    )
    env = dict(
        os.environ,
        STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}",
        GOOGLE_APPLICATION_CREDENTIALS=str(credentials),
        GOOGLE_CLOUD_PROJECT="emulator",
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the GCS emulator did not start")
                time.sleep(0.1)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)


_GCS_SCRIPT = """
import json, sys
from apache_beam.io.filesystems import FileSystems
from pipelines import options, pretraining_data

mode, *args = sys.argv[1:]
if mode == "put":  # local file -> gs:// through Beam's GCS filesystem
    src, dst = args
    with open(src, "rb") as f, FileSystems.create(dst) as out:
        out.write(f.read())
elif mode == "run":  # the pretraining job's Beam pipeline, gs:// in and out
    settings, pipeline_options = options.parse(args)
    result = pretraining_data.run_pipeline(settings, pipeline_options)
    shards = pretraining_data._shards(settings)
    records = []
    for path in shards:
        with FileSystems.open(path) as f:
            data = f.read()
        i = 0
        while i < len(data):
            n = int.from_bytes(data[i : i + 8], "little")
            records.append(data[i + 12 : i + 12 + n].hex())
            i += 16 + n
    leftovers = FileSystems.match([settings.output_dir + "/.temp-pieces-*"])
    print(json.dumps({
        "shards": shards,
        "records": sorted(records),
        "counters": pretraining_data.counter_totals(result),
        "leftovers": [m.path for m in leftovers[0].metadata_list],
    }))
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["direct", "prism"])
def test_gcs_emulator_input_and_output(
    engine, gcs_emulator, inputs, direct_pretraining, tmp_path
):
    """The corpus is read from and the shards written to `gs://bkt` through
    Beam's GCS filesystem; the records equal the local run's. (The vocab
    stays local and metadata.json is not written: the jobs read and write
    those through `configs.fileio`, i.e. TensorFlow's GCS client, which has
    no endpoint setting and so cannot reach an emulator.)"""
    flags = engine_flags(engine)
    env = gcs_emulator

    def script(*args):
        done = subprocess.run(
            [sys.executable, "-c", _GCS_SCRIPT, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    import glob

    for i, path in enumerate(sorted(glob.glob(inputs["corpus"]))):
        script("put", path, f"gs://bkt/corpus/corpus-{i}.txt")
    out = script(
        "run",
        *_pretraining_argv(
            "gs://bkt/corpus/corpus-*.txt", inputs["vocab"], "gs://bkt/out"
        ),
        *flags,
    )
    got = json.loads(out.strip().splitlines()[-1])
    records, meta = direct_pretraining
    assert [bytes.fromhex(r) for r in got["records"]] == records
    assert got["shards"] == [
        f"gs://bkt/out/pretraining-{i:05d}-of-00003.tfrecord" for i in range(3)
    ]
    assert got["counters"] == meta["counters"]
    assert got["leftovers"] == []
