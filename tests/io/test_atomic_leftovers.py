"""Atomic writes leave exactly their target behind, on success and on every kind of failure.

Complements tests/io/test_atomic.py (race re-check, failed write): here the successful paths of
every atomic writer and a refused overwrite are checked for stray ``.part`` files.
"""

from __future__ import annotations

import os

import pytest
from PIL import Image

from perforation_d2.errors import DSAInputError
from perforation_d2.io.atomic import (
    atomic_save_image,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


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


@pytest.mark.parametrize(("suffix", "magic"), [
    (".png", b"\x89PNG"), (".PNG", b"\x89PNG"), (".gif", b"GIF8"), (".jpg", b"\xff\xd8\xff"),
    (".jpeg", b"\xff\xd8\xff"), (".bin", b"\x89PNG"),  # an unknown suffix is written as PNG
])
def test_images_are_written_in_the_format_their_suffix_names(tmp_path, suffix, magic):
    target = tmp_path / f"image{suffix}"
    atomic_save_image(target, Image.new("L", (8, 8), 128))
    assert target.read_bytes().startswith(magic)
    assert os.listdir(tmp_path) == [target.name]


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_figures_are_written_in_the_format_their_suffix_names(tmp_path, suffix, magic):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from perforation_d2.io.atomic import atomic_save_figure

    figure = Figure(figsize=(1, 1))
    figure.add_subplot().plot([0, 1], [0, 1])
    target = tmp_path / f"figure{suffix}"
    atomic_save_figure(target, figure, dpi=20)
    assert target.read_bytes().startswith(magic)
    with pytest.raises(DSAInputError, match="already exists"):
        atomic_save_figure(target, figure)
    assert os.listdir(tmp_path) == [target.name]


def test_json_is_written_with_one_space_indent_and_a_final_newline(tmp_path):
    import json

    obj = {"b": [1, 2], "a": {"c": None}}
    atomic_write_json(tmp_path / "x.json", obj)
    assert (tmp_path / "x.json").read_text() == json.dumps(obj, indent=1) + "\n"
    atomic_write_json(tmp_path / "y.json", obj, indent=None)
    assert (tmp_path / "y.json").read_text() == json.dumps(obj) + "\n"


def test_figure_overwrite_and_save_options_are_passed_on(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from perforation_d2.io.atomic import atomic_save_figure

    figure = Figure(figsize=(1, 1))
    target = tmp_path / "f.png"
    atomic_save_figure(target, figure, dpi=10)
    small = target.read_bytes()
    atomic_save_figure(target, figure, overwrite=True, dpi=40)
    assert len(target.read_bytes()) > len(small) and os.listdir(tmp_path) == ["f.png"]
    atomic_save_figure(tmp_path / "nosuffix", figure, dpi=10)
    assert (tmp_path / "nosuffix").read_bytes().startswith(b"\x89PNG")


def test_every_writer_refuses_to_replace_by_default(tmp_path):
    target = tmp_path / "taken.png"
    target.write_bytes(b"the user's file")
    for write in (lambda: atomic_write_bytes(target, b"x"), lambda: atomic_write_text(target, "x"),
                  lambda: atomic_write_json(target, [1]), lambda: atomic_save_image(target, Image.new("L", (2, 2)))):
        with pytest.raises(DSAInputError, match="already exists"):
            write()
    assert target.read_bytes() == b"the user's file" and os.listdir(tmp_path) == ["taken.png"]


def test_image_save_options_are_passed_on(tmp_path):
    noise = Image.effect_noise((64, 64), 60)
    atomic_save_image(tmp_path / "low.jpg", noise, quality=5)
    atomic_save_image(tmp_path / "high.jpg", noise, quality=95)
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / "high.jpg").stat().st_size
