"""One writer per output location: a lock file taken before any work.

Every command that writes an output location (`--output_dir` of a data
job, `--model_dir`, `--export_dir`, `pipelines.vocab --output`) calls
`acquire(location, command)` right after its flags are checked. The lock is
a small hidden JSON file beside the location (`.<name>.lock` in its
parent: never inside it, so no job mistakes it for output or clears it)
holding the owner's pid, host, process start time, command and start
time. It is released when the process exits (normally, on an error, on
Ctrl-C); a process killed outright (SIGKILL, OOM, a lost machine) leaves it.

A second process is refused with one line naming the holder. A lock whose
holder is provably gone (same host, and that pid is not running or is a
different process now) is stale: the new run says so in one line and takes
it over, so a killed run can still be resumed by rerunning it. A lock from
another host cannot be checked and is never taken: the line says which file
to delete once that run is known to be gone.

Locally the lock is created with `O_CREAT | O_EXCL`, so two processes that
start together cannot both get it. Remote paths (`gs://...`) have no
create-exclusive operation through `tf.io.gfile` or Beam's `FileSystems`
(Cloud Storage itself has one, a write with `ifGenerationMatch=0`, that
neither library exposes): there the lock is best effort (refused when the
file exists; else written, then read back to check that this process's
token survived), which catches the common mistake of a second job started
later on the same location, but not two started in the same second.
TensorFlow's CheckpointManager and Beam's file sinks likewise assume one
writer and do not lock. TF-free.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import time
import uuid

from configs import fileio
from configs.schema import ConfigError

_held: dict[str, str] = {}  # lock path -> this process's token


class OutputLocked(ConfigError):
    """Another run holds the output location (one line for the user)."""


def lock_path(location: str) -> str:
    """Where the lock of `location` (a directory or a file) lives: beside it."""
    trimmed = location.rstrip("/")
    parent, name = trimmed.rsplit("/", 1) if "/" in trimmed else (".", trimmed)
    if not name or parent.endswith(":/") or (not parent and "://" not in trimmed):
        raise ConfigError(f"{location}: choose a directory below the root")
    # A hidden sibling, not `<location>.lock`: object stores list by name
    # prefix, so "out/run.lock" would show up inside a listing of "out/run".
    return f"{parent}/.{name}.lock"


def _process_start(pid: int) -> str:
    """The kernel's start time of `pid` (clock ticks since boot), or ""."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Field 22; the command name (field 2) may hold spaces.
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but running
    now = _process_start(pid)
    return not (start and now and now != start)  # pid reused: not the holder


def _describe(holder: dict) -> str:
    started = holder.get("started", "?")
    return (
        f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, started {started})"
    )


def _read(path: str) -> dict:
    try:
        with fileio.open_file(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return {}


def acquire(location: str, command: str) -> str:
    """Takes the lock of `location` for this process; returns the lock path.

    Idempotent within one process (a second `run()` in the same process
    re-takes its own lock). Released at exit, or with `release`.

    Raises:
        OutputLocked: another live run holds it, or a run on another host
            does (one line naming the holder and the lock file).
    """
    path = lock_path(location)
    token = _held.get(path) or uuid.uuid4().hex
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_start": _process_start(os.getpid()),
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "token": token,
    }
    data = json.dumps(me, indent=1).encode("utf-8")
    parent = os.path.dirname(path)
    try:
        if parent:
            fileio.makedirs(parent)
    except OSError as e:
        raise ConfigError(f"cannot create {parent}: {e.strerror or e}") from None
    if "://" in path:
        _acquire_remote(path, data, token, me)
    else:
        _acquire_local(path, data, me, location)
    if path not in _held:
        atexit.register(release, path)
    _held[path] = token
    return path


def _acquire_local(path: str, data: bytes, me: dict, location: str) -> None:
    for _ in range(3):  # a stale lock is removed, then created anew
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _check_holder(path, _read(path), me, location)
            continue
        except OSError as e:
            raise ConfigError(
                f"cannot create the lock file {path}: {e.strerror or e}"
            ) from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    raise OutputLocked(f"{path}: another run keeps taking this lock; try again")


def _check_holder(path: str, holder: dict, me: dict, location: str) -> None:
    """Returns after removing a stale lock; raises for a live or foreign one."""
    if holder.get("token") == me["token"] or (
        holder.get("pid") == me["pid"]
        and holder.get("host") == me["host"]
        and holder.get("process_start") == me["process_start"]
    ):
        os.remove(path)  # ours, from an earlier run() of this process
        return
    if not holder:
        # Being written this instant, or damaged: judge by its age.
        try:
            age = time.time() - os.path.getmtime(path)
        except FileNotFoundError:
            return
        if age < 10:
            raise OutputLocked(
                f"{path}: another run is starting on this output; try again"
            )
        print(f"note: removing the unreadable lock {path} ({age:.0f} s old)")
        os.remove(path)
        return
    if holder.get("host") == me["host"]:
        pid = int(holder.get("pid", -1))
        if pid > 0 and _alive(pid, str(holder.get("process_start", ""))):
            raise OutputLocked(
                f"{location} is in use by {_describe(holder)}; "
                "wait for it, stop it, or choose another output location"
            )
        print(
            f"note: taking over the lock of {_describe(holder)}, which is no "
            "longer running (killed?)",
            flush=True,
        )
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        return
    raise OutputLocked(
        f"{location} is locked by {_describe(holder)}, on "
        f"another host; delete {path} once that run is known to be gone"
    )


def _acquire_remote(path: str, data: bytes, token: str, me: dict) -> None:
    if fileio.exists(path):
        holder = _read(path)
        if holder.get("token") != token:
            raise OutputLocked(
                f"{path}: the output is locked by {_describe(holder)}; delete "
                "the lock file once that run is known to be gone"
            )
    fileio.write_atomic(path, data)
    if _read(path).get("token") != token:
        raise OutputLocked(f"{path}: another run took this lock at the same time")


def release(path: str) -> None:
    """Removes this process's lock at `path` (no-op if not ours or gone)."""
    token = _held.pop(path, None)
    if token is None:
        return
    try:
        if _read(path).get("token") == token:
            fileio.remove(path)
    except OSError:
        pass


@contextlib.contextmanager
def released_at_end():
    """Releases, on leaving, every lock `acquire` took inside the block.

    A command's `run(argv)` is wrapped in it, so a run called in-process
    (tests, notebooks) frees its location when it returns or raises; at
    exit would be too late for the caller's next step.
    """
    before = set(_held)
    try:
        yield
    finally:
        for path in [p for p in _held if p not in before]:
            release(path)
