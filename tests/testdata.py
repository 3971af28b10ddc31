"""Test data importable from any test module: the tiny corpus and inline
vocabulary, and where the optional shared data lives.

Test modules import `shared_data` from here, not from `conftest`: with
several `conftest.py` files in the tree, `import conftest` resolves to
whichever was imported first.
"""

import contextlib
import os
import resource
import signal
import string

import pytest

SHARED_DATA = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"
)


def shared_data(*parts):
    """Path under ../shared/data, or skips the test where it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared data not available: {path}")
    return path


@contextlib.contextmanager
def file_size_limit(limit):
    """In this process, a write past `limit` bytes of any file fails with
    EFBIG for real (a full disk without mount or root): RLIMIT_FSIZE's soft
    limit, with SIGXFSZ (which would kill the process) ignored. Both are
    restored after; the hard limit is untouched, so anyone may do this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


CORPUS_TEXT = """\
The quick brown fox jumps over the lazy dog.
It was not amused by the fox at all.
The dog went back to sleep under the old tree.
Later that day the fox came back again.

A second document starts here.
It talks about the weather and the sea.
The sea was calm and the sky was blue.
Boats sailed out of the harbor in the morning.
They came back at night with many fish.

Short third document with two lines.
This is the second line of it.
"""

WORDS = sorted(
    set(
        w.strip(".,").lower()
        for w in CORPUS_TEXT.split()
        + "good bad great movie film terrible wonderful not".split()
    )
)


def make_vocab_tokens(words=WORDS, num_unused=3):
    """Inline WordPiece vocab: specials, [unusedN], characters, ##chars, words."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    unused = [f"[unused{i}]" for i in range(num_unused)]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    suffixes = ["##" + c for c in string.ascii_lowercase + string.digits]
    seen = set(specials + unused + chars + suffixes)
    extra = [w for w in words if w not in seen]
    return specials + unused + chars + suffixes + extra
