"""Fixtures of the model tests (helpers live in pretraining_records.py)."""

import pytest

from pretraining_records import write_records


@pytest.fixture
def records_dir(tmp_path):
    return write_records(tmp_path / "records")
