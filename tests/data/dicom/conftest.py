"""Fixtures shared by the DICOM tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def salt_file(tmp_path_factory, monkeypatch) -> Path:
    """Each test's own per-user salt file, outside ``tmp_path`` (never the real ~/.config)."""
    path = tmp_path_factory.mktemp("config") / "perforation_d2" / "salt"
    monkeypatch.setenv("PERFORATION_D2_SALT_FILE", str(path))
    monkeypatch.delenv("PERFORATION_D2_SALT", raising=False)
    return path
