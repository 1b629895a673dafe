"""A per-test pseudonymisation salt file, so that no test reads or writes the user's ~/.config."""

from __future__ import annotations

from pathlib import Path

import pytest


def use_salt_file(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, salt: str) -> Path:
    """Write ``salt`` to a fresh file and point ``PERFORATION_D2_SALT_FILE`` at it (``PERFORATION_D2_SALT`` unset)."""
    path = tmp_path_factory.mktemp("config") / "salt"
    path.write_text(salt + "\n")
    monkeypatch.setenv("PERFORATION_D2_SALT_FILE", str(path))
    monkeypatch.delenv("PERFORATION_D2_SALT", raising=False)
    return path
