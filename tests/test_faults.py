"""Faults injected for real into the commands a user runs (issue 12).

Each test runs the real command in a fresh process and hurts it the way a
user's world does: `kill -9` in the middle of writing shards, a `.gz` cut
by `head -c`, a file of blank lines. The in-process versions of the same
cases (fast, in `make test`) live beside the code they test:
tests/pipelines/test_pretraining_data.py, test_classification_data.py,
tests/model/test_finetune.py and test_export.py. These start Python,
TensorFlow and Beam in a subprocess, so they are slow-marked.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _data_job(corpus, vocab, out, *extra):
    return [
        sys.executable,
        "-m",
        "pipelines.pretraining_data",
        f"--input={corpus}",
        f"--vocab={vocab}",
        f"--output_dir={out}",
        "--max_seq_length=32",
        "--max_predictions_per_seq=5",
        "--num_shards=2",
        *extra,
    ]


def _run(argv, **kwargs):
    return subprocess.run(
        argv, cwd=ROOT, env=kwargs.pop("env", _ENV), capture_output=True, **kwargs
    )


def _error_lines(proc):
    """Our `error:` lines on stderr (TensorFlow's C++ start-up lines aside)."""
    return [l for l in proc.stderr.decode().splitlines() if l.startswith("error: ")]


@pytest.mark.slow
def test_kill_9_while_concatenating_shards(tmp_path, corpus_file, vocab_file):
    from pipelines import tfrecords

    out = tmp_path / "out"
    marker = tmp_path / "stalled"
    env = dict(_ENV, **{tfrecords.STALL_BEFORE_RENAME_ENV: str(marker)})
    job = subprocess.Popen(
        _data_job(corpus_file, vocab_file, out),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed whole below
    )
    try:
        deadline = time.time() + 120
        while not marker.exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the job never reached the shard rename"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    # A shard was half done when the job died: only a temporary name holds it.
    names = os.listdir(out)
    assert "metadata.json" not in names
    assert not [n for n in names if n.startswith("pretraining-")], names
    assert [n for n in names if n.startswith(tfrecords.TEMP_PREFIX)], names
    # A plain rerun (no --overwrite) clears the pieces and commits a whole run.
    proc = _run(_data_job(corpus_file, vocab_file, out))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert sorted(os.listdir(out)) == [
        "config.yaml",
        "metadata.json",
        "pretraining-00000-of-00002.tfrecord",
        "pretraining-00001-of-00002.tfrecord",
    ]
    for name in sorted(os.listdir(out))[2:]:
        assert tfrecords.count_records(str(out / name)) > 0


@pytest.mark.slow
def test_head_c_truncated_gzip_and_blank_input(tmp_path, corpus_file, vocab_file):
    whole = tmp_path / "corpus.txt"
    whole.write_bytes(open(corpus_file, "rb").read() * 300)
    subprocess.run(["gzip", "-k", str(whole)], check=True)
    packed = str(whole) + ".gz"
    cut = tmp_path / "cut.txt.gz"
    size = os.path.getsize(packed)
    with open(cut, "wb") as f:
        subprocess.run(["head", "-c", str(size // 2), packed], stdout=f, check=True)
    proc = _run(_data_job(cut, vocab_file, tmp_path / "a"))
    assert proc.returncode == 1
    (line,) = _error_lines(proc)
    assert f"input {cut} cannot be read to its end" in line
    assert not (tmp_path / "a" / "metadata.json").exists()

    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n")
    proc = _run(_data_job(blank, vocab_file, tmp_path / "b"))
    assert proc.returncode == 1
    (line,) = _error_lines(proc)
    assert line.startswith("error: no pretraining instances from")
    assert os.listdir(tmp_path / "b") == []
