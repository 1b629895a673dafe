"""The ``prepare-dicom`` boxes file: perforation boxes keyed by input file path or SeriesInstanceUID.

::

    {"run1.dcm": [{"frame": 12, "bbox": [x, y, w, h]}], "1.2.840.113619.2.5.7": [...], "run2.dcm": []}

A key is a file path relative to ``--input`` (with ``/``; for a file ``--input``, its name), and
``frame`` the 0-based frame within that file (default 0); or a SeriesInstanceUID, and ``frame``
the index in the series' frame order. ``bbox`` is ``[x, y, w, h]`` in pixels, inside the image,
w, h > 0; ``instance_id`` (default 0, at most 999) tells several perforations of a series apart.
An empty list documents an annotated negative. Keys never reach the outputs; a UID key is named
in messages only by its position. Every problem of the file is listed at once.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ...errors import DSAInputError, format_problems
from ...io.json_io import read_json
from .scan import DicomScan, DicomSeriesPlan

_UID_KEY = re.compile(r"\d+(\.\d+)+")
_BOX_KEYS = {"frame", "bbox", "instance_id"}
_HINT = 'The boxes file maps an input file path to a list of {"frame": i, "bbox": [x, y, w, h]}.'


def read_boxes(path: Path) -> dict[str, list[dict]]:
    """Parse and check the boxes file's structure (matching against the input comes later)."""
    data = read_json(path, "boxes file", _HINT)
    if not isinstance(data, dict):
        raise DSAInputError(f"{path}: the boxes file must be a JSON object keyed by input file path.")
    problems = []
    boxes: dict[str, list[dict]] = {}
    for number, (key, entries) in enumerate(data.items(), start=1):
        label = _key_label(key, number)
        if not isinstance(entries, list):
            problems.append(f"{label}: the value must be a list of boxes")
            continue
        checked = []
        for index, entry in enumerate(entries):
            where = f"{label}, box #{index}"
            if not isinstance(entry, dict):
                problems.append(f"{where}: must be an object with 'bbox' and optional 'frame', 'instance_id'")
                continue
            unknown = sorted(set(entry) - _BOX_KEYS)
            if unknown:
                problems.append(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
            frame, instance = entry.get("frame", 0), entry.get("instance_id", 0)
            bbox = entry.get("bbox")
            if not _is_int(frame) or frame < 0:
                problems.append(f"{where}: 'frame' must be a non-negative integer, got {_short(frame)}")
            if not _is_int(instance) or not 0 <= instance < 1000:
                problems.append(f"{where}: 'instance_id' must be an integer 0-999, got {_short(instance)}")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                problems.append(f"{where}: 'bbox' must be [x, y, w, h], four finite numbers, got {_short(bbox)}")
            elif bbox[2] <= 0 or bbox[3] <= 0:
                problems.append(f"{where}: non-positive box size {bbox[2]} x {bbox[3]}")
            elif bbox[0] < 0 or bbox[1] < 0:
                problems.append(f"{where}: box {bbox} starts outside the image")
            checked.append({"frame": frame, "bbox": bbox, "instance_id": instance})
        boxes[key] = checked
    if problems:
        raise DSAInputError(format_problems(str(path), problems))
    return boxes


def match_boxes(path: Path, boxes: dict[str, list[dict]], scan: DicomScan) -> dict[str, list[dict]]:
    """``{series key: [{"frame": series frame, "bbox", "instance_id"}]}``; every mismatch is an error."""
    root = scan.folder
    by_file: dict[str, tuple[DicomSeriesPlan, int, int]] = {}
    for plan in scan.plans:
        offset = 0
        for header in plan.files:
            by_file[header.path.relative_to(root).as_posix()] = (plan, offset, header.num_frames)
            offset += header.num_frames
    skipped = scan.skipped_files
    problems, matched = [], {}
    for number, (key, entries) in enumerate(boxes.items(), start=1):
        label = _key_label(key, number)
        if key in by_file:
            plan, offset, frames = by_file[key]
        else:
            plans = [p for p in scan.plans if _UID_KEY.fullmatch(key) and p.has_series_uid(key)]
            if len(plans) != 1:
                if root / key in skipped:
                    problems.append(f"{label}: this file was skipped (see the skip reasons above)")
                elif plans:
                    problems.append(f"{label}: this SeriesInstanceUID has several multi-frame files; key them by path")
                else:
                    problems.append(f"{label}: matches no imported file or series")
                continue
            plan, offset, frames = plans[0], 0, plans[0].num_frames
        for index, box in enumerate(entries):
            x, y, w, h = box["bbox"]
            if box["frame"] >= frames:
                problems.append(f"{label}, box #{index}: frame {box['frame']} does not exist ({frames} frame(s))")
            elif x + w > plan.width or y + h > plan.height:
                problems.append(
                    f"{label}, box #{index}: box [{x}, {y}, {w}, {h}] lies outside the {plan.width} x "
                    f"{plan.height} image"
                )
            else:
                matched.setdefault(plan.series_key, []).append({**box, "frame": offset + box["frame"]})
    if problems:
        raise DSAInputError(format_problems(str(path), problems))
    return matched


def _key_label(key: str, number: int) -> str:
    """How a boxes key is named in messages: a path as given, a UID only by its position."""
    return f"key #{number} (a UID)" if _UID_KEY.fullmatch(key) else f"key {_short(key)}"


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a hostile file's values stay readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
