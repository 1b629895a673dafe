"""Fixtures shared by every test; plain helpers live in ``tests/helpers/`` (importable as ``helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cohorts import make_toy_cohort


@pytest.fixture
def toy_cohort(tmp_path: Path) -> Path:
    """A valid 4-patient cohort (2 positive), one 5-frame 64 px series each; returns cohort.json."""
    return make_toy_cohort(tmp_path / "toy")
