"""One writer per output location, with real processes (configs/output_lock.py)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from configs import output_lock
from configs.schema import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")

# A process that takes the lock of argv[1] as "holder", says so, and waits.
HOLDER = """
import sys, time
from configs import output_lock
output_lock.acquire(sys.argv[1], "holder")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold(location, seconds=60):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(location), str(seconds)],
        env=_ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _run(*argv):
    """Runs `python ARGV...` from the repository root; its result, text."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_second_process_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        with pytest.raises(output_lock.OutputLocked) as e:
            output_lock.acquire(str(out), "second")
        message = str(e.value)
        assert f"pid {holder.pid}" in message and "holder" in message
        assert socket.gethostname() in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_process_is_reported_and_taken(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _hold(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.exists(output_lock.lock_path(str(out)))  # SIGKILL leaves it
    path = output_lock.acquire(str(out), "rerun")
    note = capsys.readouterr().out
    assert "taking over the lock" in note and f"pid {holder.pid}" in note
    assert json.loads(open(path).read())["pid"] == os.getpid()
    output_lock.release(path)
    assert not os.path.exists(path)


def test_lock_released_when_the_process_fails(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys\nfrom configs import output_lock\n"
        f"output_lock.acquire({str(out)!r}, 'x')\nraise SystemExit('error: boom')"
    )
    proc = _run("-c", code)
    assert proc.returncode == 1
    assert not os.path.exists(output_lock.lock_path(str(out)))


def test_lock_from_another_host_is_never_taken(tmp_path):
    out = tmp_path / "run"
    lock = output_lock.lock_path(str(out))
    with open(lock, "w") as f:
        json.dump({"pid": 1, "host": "elsewhere", "command": "model.pretrain"}, f)
    with pytest.raises(output_lock.OutputLocked, match="another host; delete"):
        output_lock.acquire(str(out), "second")
    assert json.load(open(lock))["host"] == "elsewhere"


def test_same_process_retakes_its_own_lock(tmp_path):
    out = str(tmp_path / "run")
    first = output_lock.acquire(out, "a")
    assert output_lock.acquire(out, "b") == first
    output_lock.release(first)
    assert not os.path.exists(first)


def test_unwritable_location_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create"):
        output_lock.acquire(str(blocker / "sub" / "run"), "x")


def test_data_job_refused_while_another_writes_the_directory(
    tmp_path, corpus_file, vocab_file
):
    out = tmp_path / "records"
    holder = _hold(out)
    try:
        proc = _run(
            "-m",
            "pipelines.pretraining_data",
            f"--input={corpus_file}",
            f"--vocab={vocab_file}",
            f"--output_dir={out}",
            "--max_seq_length=32",
            "--max_predictions_per_seq=5",
        )
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"pid {holder.pid}" in errors[0], proc.stderr
    assert not out.exists() or not any(out.iterdir())  # no work was done


@pytest.mark.parametrize("command", ["model.pretrain", "model.finetune"])
def test_trainers_refused_while_another_holds_the_model_dir(
    tmp_path, corpus_file, command
):
    model_dir = tmp_path / "run"
    holder = _hold(model_dir)
    flags = {
        "model.pretrain": [f"--data={tmp_path}/none"],
        "model.finetune": [f"--train={corpus_file}", f"--eval={corpus_file}"],
    }[command]
    try:
        proc = _run("-m", command, f"--model_dir={model_dir}", *flags)
    finally:
        holder.kill()
        holder.wait()
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], proc.stderr


def test_lock_lives_beside_the_location_not_under_its_name(tmp_path):
    assert output_lock.lock_path(f"{tmp_path}/out/run/") == f"{tmp_path}/out/.run.lock"
    assert output_lock.lock_path("gs://b/x/run") == "gs://b/x/.run.lock"
    with pytest.raises(ConfigError, match="below the root"):
        output_lock.lock_path("/")
