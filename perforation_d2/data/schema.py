"""The field-level schema of a cohort entry: types, ranges, lengths and safe frame paths.

:func:`check_entry` words every problem of one video, image or annotation (missing or mistyped
keys, optional keys of the wrong type, non-finite numbers, over-long or unencodable text);
:func:`file_name_problem` and :func:`frame_file_problem` keep a frame's ``file_name`` a relative
path that stays inside the image root (also through symbolic links) and names a file. Every check
costs time linear in the entry's size, whatever the numbers in it say.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Any

# JSON integers are unbounded in Python; ids, sizes and frame numbers must fit the int64 that
# NumPy, PyTorch and pycocotools store them in.
INT64 = 2**63
# DICOM Rows/Columns are 16-bit; no frame of a cohort is larger.
MAX_SIDE = 65535
MAX_TEXT = 255  # names and ids (they end up in file names)
MAX_PATH = 4096  # PATH_MAX on Linux

# Required fields and their JSON types ("int" excludes booleans; "pos" = positive int ("side":
# at most MAX_SIDE); "text" = non-empty string of at most MAX_TEXT characters).
VIDEO_FIELDS = {
    "id": "int", "name": "text", "width": "side", "height": "side",
    "patient_id": "text", "cohort": "text", "num_frames": "int",
}
IMAGE_FIELDS = {
    "id": "int", "file_name": "path", "video_id": "int", "frame_id": "int",
    "width": "side", "height": "side",
}
ANNOTATION_FIELDS = {"id": "int", "image_id": "int", "bbox": "box"}
# Optional fields: checked when present and not null.
OPTIONAL_FIELDS = {
    "video": {"label": "binary", "frame_time_ms": "positive number"},
    "image": {},
    # category_id and iscrowd have their own wording in cohort.py.
    "annotation": {"video_id": "int", "instance_id": "int", "area": "non-negative number"},
}
REQUIRED_FIELDS = {"video": VIDEO_FIELDS, "image": IMAGE_FIELDS, "annotation": ANNOTATION_FIELDS}

KIND_TEXT = {
    "int": "an integer (64-bit)", "side": f"a positive integer up to {MAX_SIDE}",
    "text": f"a non-empty string of at most {MAX_TEXT} characters",
    "path": "a non-empty relative path",
    "box": "a list of four finite numbers [x, y, w, h]",
    "binary": "0 or 1", "positive number": "a positive finite number or null", "non-negative number": "a non-negative finite number",
}


def is_int(value: Any) -> bool:
    return type(value) is int and -INT64 <= value < INT64


def _finite(value: Any) -> bool:
    kind = type(value)
    return (kind is int and -INT64 <= value < INT64) or (kind is float and value - value == 0)  # nan, inf fail


def _text_ok(value: Any, limit: int) -> bool:
    if type(value) is not str or not 0 < len(value) <= limit or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")  # a lone surrogate ("\ud800" in the JSON) cannot be written anywhere
    except UnicodeEncodeError:
        return False
    return True


def type_ok(value: Any, kind: str) -> bool:
    if kind == "int":
        return is_int(value)
    if kind == "side":
        return type(value) is int and 0 < value <= MAX_SIDE
    if kind == "text":
        return _text_ok(value, MAX_TEXT)
    if kind == "path":
        return _text_ok(value, MAX_PATH)
    if kind == "binary":
        return type(value) is int and value in (0, 1)
    if kind == "positive number":
        return _finite(value) and value > 0
    if kind == "non-negative number":
        return _finite(value) and value >= 0
    # "box": four finite numbers
    return type(value) is list and len(value) == 4 and all(_finite(v) for v in value)


def _optional_int(value: Any) -> bool:
    return value is None or (type(value) is int and -INT64 <= value < INT64)


# Fast whole-entry checks (required and optional fields); only an entry that fails one goes
# through the field-by-field check that words the problem. This keeps a 25,000-frame cohort
# well under a second.
def _video_ok(v: dict) -> bool:
    frame_time, label = v.get("frame_time_ms"), v.get("label")
    return (is_int(v["id"]) and is_int(v["num_frames"]) and type_ok(v["width"], "side")
            and type_ok(v["height"], "side") and _text_ok(v["name"], MAX_TEXT)
            and _text_ok(v["patient_id"], MAX_TEXT) and _text_ok(v["cohort"], MAX_TEXT)
            and (label is None or type_ok(label, "binary"))
            and (frame_time is None or type_ok(frame_time, "positive number")))


def _image_ok(i: dict, low: int = -INT64, high: int = INT64) -> bool:
    # Inlined integer checks: this runs once per frame of the cohort.
    iid, vid, fid, w, h, name = i["id"], i["video_id"], i["frame_id"], i["width"], i["height"], i["file_name"]
    return (type(iid) is int and type(vid) is int and type(fid) is int and type(w) is int and type(h) is int
            and low <= iid < high and low <= vid < high and low <= fid < high
            and 0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and _text_ok(name, MAX_PATH))


def _annotation_ok(a: dict, low: int = -INT64, high: int = INT64) -> bool:
    aid, iid, box, area = a["id"], a["image_id"], a["bbox"], a.get("area")
    return (type(aid) is int and type(iid) is int and low <= aid < high and low <= iid < high
            and type(box) is list and len(box) == 4
            and _finite(box[0]) and _finite(box[1]) and _finite(box[2]) and _finite(box[3])
            and _optional_int(a.get("video_id")) and _optional_int(a.get("instance_id"))
            and (area is None or type_ok(area, "non-negative number")))


_FAST_CHECKS = {"video": _video_ok, "image": _image_ok, "annotation": _annotation_ok}


def entry_label(entry: Any, what: str, index: int) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{what} id {ident}" if is_int(ident) else f"{what} #{index}"


def check_entry(entry: Any, what: str, index: int, problems: list[str]) -> bool:
    """Append a problem per missing or mistyped field of one ``what`` ("video", "image",
    "annotation"); True when its required fields are all usable."""
    if type(entry) is dict:
        try:
            if _FAST_CHECKS[what](entry):
                return True
        except (KeyError, TypeError):
            pass
    if not isinstance(entry, dict):
        problems.append(f"{what} #{index} is not a JSON object")
        return False
    label = entry_label(entry, what, index)
    ok = True
    for key, kind in REQUIRED_FIELDS[what].items():
        if key not in entry:
            problems.append(f"{label}: missing key '{key}'")
            ok = False
        elif not type_ok(entry[key], kind):
            problems.append(f"{label}: '{key}' must be {KIND_TEXT[kind]}, got {shown(entry[key])}")
            ok = False
    for key, kind in OPTIONAL_FIELDS[what].items():
        value = entry.get(key)
        if value is not None and not type_ok(value, kind):
            # Reported but not blocking: the entry's references still check out.
            problems.append(f"{label}: '{key}' must be {KIND_TEXT[kind]} when present, got {shown(value)}")
    return ok


def shown(value: Any, limit: int = 80) -> str:
    """``repr`` of a JSON value, cut short (a megabyte-long bad value must not flood the message) and
    ASCII-only (a lone surrogate from the JSON would make printing the message itself fail)."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_name_problem(file_name: str) -> str | None:
    """Why a (well-typed) ``file_name`` cannot name a frame under the image root; None when it can."""
    if file_name[0] in "/\\":
        return f"'file_name' must be relative to the image root, got the absolute path {shown(file_name)}"
    normal = None
    if ".." in file_name:
        normal = posixpath.normpath(file_name.replace("\\", "/"))
        if normal == ".." or normal.startswith("../"):
            return f"'file_name' {shown(file_name)} climbs out of the image root"
    if normal == "." or not file_name.strip("./"):
        return f"'file_name' {shown(file_name)} names the image root itself, not a frame file"
    return None


class FrameFileChecker:
    """Checks that frame files exist under ``root``, are files, and do not lead outside it.

    Directories are resolved once each (frames of a series share one), so the cost is about two
    ``stat`` calls per frame.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(self.root)
        self._inside: dict[str, bool] = {}

    def _is_inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def problem(self, file_name: str) -> str | None:
        """``None`` when ``root/file_name`` is a regular file inside the root, else what is wrong."""
        path = os.path.join(self.root, file_name)
        folder = os.path.dirname(path)
        inside = self._inside.get(folder)
        if inside is None:
            inside = self._inside[folder] = self._is_inside(os.path.realpath(folder))
        try:
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                if not self._is_inside(os.path.realpath(path)):
                    inside = False
                info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return f"missing image file {path}" if inside else self._outside(path)
        except OSError as err:
            return f"cannot read image file {path} ({err.strerror or err})"
        if not inside:
            return self._outside(path)
        if stat.S_ISDIR(info.st_mode):
            return f"{path} is a folder, not a frame file"
        if not stat.S_ISREG(info.st_mode):
            return f"{path} is not a regular file"
        return None

    def _outside(self, path: str) -> str:
        return (f"{path} leads outside the image root {self.root} (through a symbolic link to "
                f"{os.path.realpath(path)})")
