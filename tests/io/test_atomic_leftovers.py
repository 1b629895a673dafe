"""Atomic writes leave exactly their target behind, on success and on every kind of failure.

Complements tests/io/test_atomic.py (race re-check, failed write): here the successful paths of
every atomic writer and a refused overwrite are checked for stray ``.part`` files.
"""

from __future__ import annotations

import os

import pytest
from PIL import Image

from perforation_d2.errors import DSAInputError
from perforation_d2.io.atomic import atomic_save_image, atomic_write_bytes, atomic_write_json, atomic_write_text


@pytest.mark.parametrize("writer", ["bytes", "text", "json", "image"])
def test_a_successful_write_leaves_only_its_target(tmp_path, writer):
    target = tmp_path / ("out.png" if writer == "image" else "out.bin")
    write = {
        "bytes": lambda overwrite: atomic_write_bytes(target, b"\x00data", overwrite=overwrite),
        "text": lambda overwrite: atomic_write_text(target, "text\n", overwrite=overwrite),
        "json": lambda overwrite: atomic_write_json(target, {"a": [1, 2]}, overwrite=overwrite),
        "image": lambda overwrite: atomic_save_image(target, Image.new("L", (4, 4)), overwrite=overwrite),
    }[writer]
    write(False)
    first = target.read_bytes()
    assert os.listdir(tmp_path) == [target.name]
    with pytest.raises(DSAInputError, match="already exists"):
        write(False)  # refused before anything is written
    assert os.listdir(tmp_path) == [target.name] and target.read_bytes() == first
    write(True)
    assert os.listdir(tmp_path) == [target.name] and target.read_bytes() == first


def test_a_lone_surrogate_is_refused_without_leftovers(tmp_path):
    with pytest.raises(DSAInputError, match="surrogate"):
        atomic_write_text(tmp_path / "x.txt", "bad \udc80 name")
    with pytest.raises(DSAInputError):
        atomic_write_json(tmp_path / "x.json", {"file": "bad \udc80 name"})
    assert os.listdir(tmp_path) == []
