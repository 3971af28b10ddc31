"""One file-I/O helper for `configs/` and `model/`: local or remote paths.

Local paths go through the standard library, so a process that never
touches a remote path never imports TensorFlow (the JAX trainer runs on
machines without it). Paths with a scheme (`gs://`, `s3://`, TensorFlow's
in-memory `ram://`, ...) go through `tf.io.gfile`, imported only then.
`pipelines/` uses Beam's `FileSystems` instead and does not use this.

Writes that must never be seen half done (`write_atomic`) go to a
temporary name beside the target and are renamed over it: a killed
process leaves the old file or the new one, never a cut one.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob as _glob
import os
import shutil
import uuid

# errno values that mean "this write cannot fit": the filesystem is full,
# a quota is used up, or the file reached a size limit (the filesystem's
# largest file, or the process's `ulimit -f` with SIGXFSZ ignored). Each
# is handled as a full disk: one line, nothing cut left under a final name.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# What TensorFlow's and h5py's wrappers keep of those errors: the message.
_DISK_FULL_MESSAGES = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EFBIG: "File too large",
}


def scratch_dir(prefix: str = "bert-") -> str:
    """A new private local temporary directory, removed when the process
    exits (normally or by an exception; a SIGKILL leaves it to the OS's
    temp cleaner). For files a run needs only while it runs: a vocab.txt
    written from a tokenizer.json, local copies of remote weights."""
    import tempfile

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


def is_remote(path: str) -> bool:
    """True for `scheme://...` paths (handled by tf.io.gfile)."""
    return "://" in str(path)


def _gfile():
    import tensorflow as tf  # only for remote filesystems

    return tf.io.gfile


def join(*parts: str) -> str:
    """`os.path.join` that keeps `scheme://` prefixes intact."""
    return os.path.join(*[str(p) for p in parts])


def exists(path: str) -> bool:
    if is_remote(path):
        return _gfile().exists(path)
    return os.path.exists(path)


def isdir(path: str) -> bool:
    if is_remote(path):
        return _gfile().isdir(path)
    return os.path.isdir(path)


def isfile(path: str) -> bool:
    """True for an existing path that is not a directory."""
    return exists(path) and not isdir(path)


def listdir(path: str) -> list[str]:
    """Entry names (not paths) of a directory, sorted."""
    if is_remote(path):
        return sorted(n.rstrip("/") for n in _gfile().listdir(path))
    return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
    """Paths matching `pattern`, sorted."""
    if is_remote(pattern):
        return sorted(_gfile().glob(pattern))
    return sorted(_glob.glob(pattern))


def makedirs(path: str) -> None:
    """Creates `path` and its parents; a no-op if it is a directory.

    Raises:
        NotADirectoryError: `path` (or a parent) exists and is a file.
    """
    if isfile(path):
        raise NotADirectoryError(f"{path} is a file, not a directory")
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = "r"):
    """A file object for `path` (text modes read/write UTF-8)."""
    if is_remote(path):
        return _gfile().GFile(path, mode)
    if "b" in mode:
        return open(path, mode)
    return open(path, mode, encoding="utf-8")


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_atomic(path: str, data: bytes | str) -> str:
    """Writes `data` to `path` via a temporary name + rename; returns path."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    parent = os.path.dirname(str(path))
    if parent:
        makedirs(parent)
    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with names_errors(path):
            with open_file(temp, "wb") as f:
                f.write(data)
    except BaseException:
        # A full disk or a kill mid-write: no cut temporary left behind.
        with contextlib.suppress(Exception):
            remove(temp)
        raise
    rename(temp, path, overwrite=True)
    return path


def why_not_writable(path: str) -> str | None:
    """Why a file could not be written at local `path`, or None if it can.

    Checked before any work, so a job does not compute everything and
    then fail on the write: a directory in the file's place, a file where
    a directory belongs, a missing or unwritable parent (a read-only
    mount, `/proc`), tried for real with a probe file, because root passes
    every permission check but still cannot write a read-only filesystem.
    Remote paths are not checked here (None).
    """
    if is_remote(path):
        return None
    path = os.path.abspath(str(path))
    if os.path.isdir(path):
        return f"{path} is a directory; give a file path"
    parent = os.path.dirname(path)
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a directory"
    if existing != parent:
        return f"directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    probe = os.path.join(parent, f".write-check-{uuid.uuid4().hex[:8]}")
    try:
        open(probe, "wb").close()
    except OSError as e:
        return f"cannot write in {parent}: {e.strerror or e}"
    with contextlib.suppress(OSError):
        os.remove(probe)
    return None


@contextlib.contextmanager
def names_errors(path: str):
    """Re-raises an `OSError` without a file name as one naming `path`.

    `write()` and `close()` failures (a full disk) carry no file name;
    the one-line error a user reads must say which file could not be
    written.
    """
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


def free_bytes(path: str) -> int | None:
    """Free bytes on the local filesystem holding `path` (None if remote)."""
    if is_remote(path):
        return None
    probe = os.path.abspath(str(path))
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    try:
        return shutil.disk_usage(probe or "/").free
    except OSError:
        return None


def is_disk_full(error: BaseException) -> bool:
    """True for an error that says the filesystem is full (any layer's)."""
    return _disk_full_errno(error) is not None


def _disk_full_errno(error: BaseException) -> int | None:
    """The DISK_FULL_ERRNOS value `error` stands for, or None."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return error.errno
    text = str(error)
    for number, message in _DISK_FULL_MESSAGES.items():
        if message in text:
            return number
    return None


def disk_full_error(error: BaseException, path: str) -> OSError:
    """`error` (a full disk in any layer's wrapper) as an `OSError` naming
    `path`, with the errno it stands for (ENOSPC, EDQUOT or EFBIG)."""
    number = _disk_full_errno(error) or errno.ENOSPC
    return OSError(number, os.strerror(number), str(path))


RESUMES = "the run resumes from its last complete checkpoint"


def disk_full_line(error: BaseException, path: str = "", then: str = RESUMES) -> str:
    """One line: which file could not be written, why, and the space left.

    `then` says what rerunning does (a trainer resumes; an export starts
    again).
    """
    target = getattr(error, "filename", None) or path
    free = free_bytes(target) if target else None
    room = f"; {_human(free)} free there" if free is not None else ""
    if _disk_full_errno(error) == errno.EFBIG:
        return (
            f"file too large writing {target}{room}: the filesystem's largest "
            "file or this process's file-size limit (ulimit -f) was reached; "
            f"raise it (or use another directory) and rerun; {then}"
        )
    quota = _disk_full_errno(error) == errno.EDQUOT
    what = "disk quota exceeded" if quota else "no space left on device"
    return (
        f"{what} writing {target}{room}: free space (or use another "
        f"directory) and rerun; {then}"
    )


def _human(num: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num} B"


def rename(source: str, target: str, overwrite: bool = False) -> None:
    if is_remote(source) or is_remote(target):
        _gfile().rename(source, target, overwrite=overwrite)
        return
    if not overwrite and os.path.exists(target):
        raise FileExistsError(f"{target} exists")
    os.replace(source, target)


def copy(source: str, target: str, overwrite: bool = False) -> None:
    if is_remote(source) or is_remote(target):
        _gfile().copy(source, target, overwrite=overwrite)
        return
    if not overwrite and os.path.exists(target):
        raise FileExistsError(f"{target} exists")
    temp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with names_errors(target):
            shutil.copyfile(source, temp)
    except BaseException:
        with contextlib.suppress(Exception):
            remove(temp)
        raise
    os.replace(temp, target)


def remove(path: str) -> None:
    """Deletes a file, or a directory tree; a no-op if absent."""
    if not exists(path):
        return
    if is_remote(path):
        if _gfile().isdir(path):
            _gfile().rmtree(path)
        else:
            _gfile().remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def same_path(a: str, b: str) -> bool:
    """True when `a` and `b` name the same file (local paths normalised)."""
    if is_remote(a) or is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b)
