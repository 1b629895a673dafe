"""read_json / json_bytes: every broken JSON file is one paragraph naming it, never a traceback."""

from __future__ import annotations

import json

import pytest

from perforation_d2.errors import DSAInputError
from perforation_d2.io.atomic import atomic_write_json, atomic_write_text
from perforation_d2.io.json_io import json_bytes, read_json

CASES = [
    # (file content or None for "no file" / "folder", phrases the message must hold)
    ("missing", None, ["splits file not found", "does not exist"]),
    ("folder", None, ["is a folder, not a splits file"]),
    ("empty", b"", ["the splits file is empty (0 bytes)"]),
    ("blank", b" \n\t", ["is empty (3 bytes)"]),
    ("latin-1", '{"name": "Müller"}'.encode("latin-1"), ["is not UTF-8 text (byte 0xfc at offset 11)"]),
    ("truncated", b'{"folds": [1, 2', ["is not valid JSON (line 1, column 16", "cannot read the splits file"]),
    ("second line", b'{"a": 1,\n "b": }', ["line 2, column 7"]),
    ("nan", b'{"a": NaN}', ["NaN, which JSON does not allow"]),
    ("infinity", b'[-Infinity]', ["-Infinity"]),
    ("lone surrogate", b'{"file_name": "a\\ud800b.png"}', ["unpaired UTF-16 surrogate"]),
    ("lone low surrogate", b'["\\udc80"]', ["unpaired UTF-16 surrogate"]),
    ("deep nesting", b"[" * 200_000 + b"]" * 200_000, ["nested too deeply"]),
    ("deep objects", b'{"a":' * 200_000 + b"1" + b"}" * 200_000, ["nested too deeply"]),
]


@pytest.mark.parametrize(("kind", "content", "phrases"), CASES, ids=[c[0] for c in CASES])
def test_bad_json_files_are_one_paragraph_naming_the_file(tmp_path, kind, content, phrases):
    path = tmp_path / "splits.json"
    if kind == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DSAInputError) as caught:
        read_json(path, "splits file", hint="It is written by the split command.")
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    if kind not in ("missing",):
        assert message.endswith(" It is written by the split command.")


def test_valid_json_reads_as_python_would(tmp_path):
    path = tmp_path / "ok.json"
    data = {"name": "Ünïcode 😀", "pair": "\U0001F600", "escaped backslash": "\\ud800 is text here", "n": [1, 2.5]}
    path.write_text(json.dumps(data))  # ensure_ascii: the emoji is a valid surrogate pair escape
    assert read_json(path, "test file") == data


def test_json_bytes_is_the_established_format(tmp_path):
    obj = {"b": [1, 2.5], "a": "é"}
    assert json_bytes(obj, tmp_path / "x.json") == (json.dumps(obj, indent=1) + "\n").encode()


@pytest.mark.parametrize("bad", [{"file_name": "a\udcff.png"}, ["\ud800"], {"x": float("nan")}])
def test_writing_what_json_cannot_hold_is_a_clean_error_and_writes_nothing(tmp_path, bad):
    path = tmp_path / "out.json"
    with pytest.raises(DSAInputError, match=r"out\.json: cannot write it"):
        atomic_write_json(path, bad)
    assert list(tmp_path.iterdir()) == []


def test_writing_text_with_a_lone_surrogate_is_a_clean_error(tmp_path):
    path = tmp_path / "table.md"
    with pytest.raises(DSAInputError, match="unpaired surrogate"):
        atomic_write_text(path, "| model \udc80 |\n")
    assert list(tmp_path.iterdir()) == []
