"""Reading and writing the JSON files of perforation_d2 with one-paragraph errors.

:func:`read_json` is the one reader for every input JSON (cohorts, predictions, splits, boxes,
operating points, reports): a missing file, a folder, bytes that are not UTF-8, invalid JSON,
NaN/Infinity, lone surrogates or nesting too deep for Python's parser all become a
:class:`DSAInputError` naming the file, instead of a traceback. :func:`json_bytes` is the one
encoder of output JSON; a string that cannot be written as UTF-8 is an error there too.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import DSAInputError

# An escaped UTF-16 surrogate in JSON text; only when one occurs can the parsed data hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _lone_surrogate(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> Any:
    """Parse the JSON file ``path``, called ``what`` in messages ("cohort file", "splits file", ...).

    ``hint`` (a sentence saying what the file should hold) ends the message of every content
    problem. Every problem raises :class:`DSAInputError` with one paragraph naming ``path``.
    """
    path = Path(path)
    tail = f" {hint}" if hint else ""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DSAInputError(f"{path}: {what} not found (the file does not exist).") from None
    except IsADirectoryError:
        raise DSAInputError(f"{path}: is a folder, not a {what}.{tail}") from None
    except OSError as err:
        raise DSAInputError(f"{path}: cannot read the {what} ({err.strerror or type(err).__name__}).") from None
    if not raw.strip():
        raise DSAInputError(f"{path}: the {what} is empty ({len(raw)} bytes).{tail}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DSAInputError(
            f"{path}: is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}), so it cannot be "
            f"read as the {what}.{tail}"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise DSAInputError(
            f"{path}: is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); cannot read the "
            f"{what}.{tail}"
        ) from None
    except ValueError as err:  # NaN, Infinity or -Infinity, which Python accepts and JSON does not
        raise DSAInputError(
            f"{path}: is not valid JSON (it holds {err}, which JSON does not allow); cannot read the {what}.{tail}"
        ) from None
    except RecursionError:
        raise DSAInputError(
            f"{path}: its JSON is nested too deeply to be read; cannot read the {what}.{tail}"
        ) from None
    if _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(data):
        raise DSAInputError(
            f"{path}: a string in it holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is "
            f"not a character; cannot read the {what}.{tail}"
        )
    return data


def json_bytes(obj: Any, where: str | os.PathLike, indent: int | None = 1) -> bytes:
    """``obj`` as UTF-8 JSON text ending in a newline (ASCII escapes, no NaN), for the file ``where``.

    A value JSON cannot hold (NaN, a circular reference) or a string with a lone surrogate
    (for example a file name that is not valid UTF-8) raises :class:`DSAInputError`.
    """
    try:
        text = json.dumps(obj, indent=indent, allow_nan=False)
        # ensure_ascii writes a lone surrogate as an escape that strict readers reject: refuse it.
        if "\\ud" in text.lower():
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise DSAInputError(
            f"{where}: cannot write it: a string holds an unpaired surrogate (character {err.start} of the "
            "text; typically a file name that is not valid UTF-8); nothing was written."
        ) from None
    except (ValueError, RecursionError) as err:
        raise DSAInputError(f"{where}: cannot write it as JSON ({err}); nothing was written.") from None
    return (text + "\n").encode("utf-8")
