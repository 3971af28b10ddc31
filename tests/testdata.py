"""Where the optional shared data lives; importable from any test module.

Test modules import `shared_data` from here, not from `conftest`: with
several `conftest.py` files in the tree, `import conftest` resolves to
whichever was imported first.
"""

import os

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
