"""Reading DICOM datasets safely: quiet pydicom, memory-mapped parsing, tolerant attribute access.

Every value read from a header goes through :func:`get`, which turns absent, empty or unparsable
values (hostile files) into ``None``; :func:`quiet_pydicom` keeps pydicom's warnings and log
records, which may quote attribute values, out of every output. :func:`shown_path` is how a file
path appears in a message: as given, or escaped when its name is not valid UTF-8.
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID_dictionary

from ...errors import DSAInputError

# pydicom's warning filters, logger state and validation mode are process-wide: reads hold this
# lock while they change them, so concurrent reads (threads) cannot restore each other's state.
_PYDICOM_SETTINGS_LOCK = threading.RLock()


def shown_path(path: str | os.PathLike) -> str:
    """``path`` for a message: as given, or with undecodable bytes as ``\\xNN`` escapes.

    A folder listing yields names that are not valid UTF-8 as lone surrogates
    (``os.fsdecode``); such a string cannot be printed to a UTF-8 stream or written as UTF-8.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log records (they may quote attribute values) and let it
    read invalid values without raising, so that every failure is ours to word. Serialises reads
    across threads (see ``_PYDICOM_SETTINGS_LOCK``)."""
    pydicom_logger = logging.getLogger("pydicom")
    with _PYDICOM_SETTINGS_LOCK, warnings.catch_warnings():
        was_disabled = pydicom_logger.disabled
        mode = pydicom_config.settings.reading_validation_mode
        warnings.simplefilter("ignore")
        pydicom_logger.disabled = True
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        try:
            yield
        finally:
            pydicom_config.settings.reading_validation_mode = mode
            pydicom_logger.disabled = was_disabled


def read_dataset(path: Path, stop_before_pixels: bool) -> Dataset:
    """Parse ``path`` (not empty) through a read-only memory map.

    Reading from a map rather than a buffered file matters for hostile files: an element whose
    declared length is huge makes pydicom ask for that many bytes, which a map answers with the
    bytes that exist instead of allocating the declared size first. Only a failure to open the
    file is raised as is (as DSAInputError); parse errors propagate to the caller.
    """
    try:
        handle = open(path, "rb")  # closed by the with statement below
    except OSError as err:
        raise DSAInputError(f"{shown_path(path)}: cannot be read ({err.strerror or type(err).__name__}).") from None
    with handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return pydicom.dcmread(mapped, stop_before_pixels=stop_before_pixels)


def get(ds: Dataset, keyword: str, convert: Callable[[Any], Any] = lambda v: v) -> Any:
    """``convert(ds.keyword)``, or None when absent, empty or unparsable (hostile files)."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return convert(value)
    except Exception:  # any parse failure of a single value means "unusable value"
        return None


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple, MultiValue)) else value


def as_int(value: Any) -> int:
    return int(_first(value))


def as_float(value: Any) -> float:
    number = float(_first(value))
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def as_text(value: Any) -> str:
    return str(_first(value)).strip()


def parse_time(value: Any) -> float:
    """DICOM TM (``HHMMSS.FFFFFF``, or the old ``HH:MM:SS``) in seconds since midnight."""
    text = str(_first(value)).strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not match:
        raise ValueError("not a time")
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(fraction or 0)


def sop_class_text(uid: str) -> str:
    return f"SOP class {UID_dictionary[uid][0]}" if uid in UID_dictionary else "an unknown SOP class"


def transfer_syntax_text(uid: str) -> str:
    return UID_dictionary[uid][0] if uid in UID_dictionary else "an unknown transfer syntax"


def frame_time_ms(ds: Dataset) -> float | None:
    """FrameTime; else the mean FrameTimeVector increment; else 1000 / CineRate or display rate."""
    frame_time = get(ds, "FrameTime", as_float)
    if frame_time is not None and frame_time > 0:
        return frame_time
    vector = get(ds, "FrameTimeVector", lambda v: [float(x) for x in (v if isinstance(v, MultiValue) else [v])])
    if vector is not None and len(vector) >= 2:
        mean = float(np.mean(vector[1:]))
        if math.isfinite(mean) and mean > 0:
            return mean
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = get(ds, keyword, as_float)
        if rate is not None and rate > 0:
            return 1000.0 / rate
    return None
