"""``python -m perforation_d2 prepare-dicom``: DICOM XA/XRF series -> PNG frames + cohort JSON.

::

    python -m perforation_d2 prepare-dicom --input PATH --out DIR [--boxes BOXES.json]
        [--salt SALT] [--cohort-name NAME] [--overwrite] [--max-decoded-mib MIB]

Reads every XA/XRF series at ``PATH`` (a file or a folder, see
:mod:`perforation_d2.data.dicom.reader` for grouping, the pixel pipeline, frame times and the
pseudonyms) and writes the cohort of SPEC section 1::

    DIR/cohort.json                      one video per series, frame files relative to DIR
    DIR/frames/<video name>/000.png ...  8-bit grey PNG, one per frame, in series order

A video's ``name`` is its pseudonymised series key and its ``patient_id`` the salted hash of the
PatientID (``P-`` + 16 hex digits). No name, birth date, ID, UID, accession number, institution,
date or other header value appears in any output, in file names, or in messages (which name only
the file paths you gave). The salt is ``--salt``, else ``$PERFORATION_D2_SALT``, else your
per-user salt file (``$PERFORATION_D2_SALT_FILE``, default ``~/.config/perforation_d2/salt``,
created once with a random salt, mode 0600), so reruns give the same pseudonyms and a patient's
series link across your imports into different folders. The salt is never written into ``DIR``
(anyone given the folder could otherwise recompute the pseudonyms of guessed PatientIDs), and a
salt file inside ``DIR`` is refused. Keep it secret; share it only to link imports across users.

Boxes file (``--boxes``): a JSON object mapping a key to a list of boxes::

    {
      "run1.dcm":          [{"frame": 12, "bbox": [x, y, w, h]}, {"frame": 13, "bbox": [...]}],
      "series7/IM0004.dcm": [{"bbox": [x, y, w, h]}],
      "1.2.840.113619.2.5.7": [{"frame": 4, "bbox": [x, y, w, h], "instance_id": 1}],
      "run2.dcm":          []
    }

A key is a file path relative to ``--input`` (with ``/``; for a file ``--input``, its name), and
``frame`` is then the 0-based frame within that file (default 0, the only frame of a single-frame
file). A key may also be a SeriesInstanceUID, and ``frame`` is then the index in the series' frame
order. ``bbox`` is ``[x, y, w, h]`` in pixels of the original frame, inside the image, with w, h >
0. ``instance_id`` (default 0) tells apart several perforations of one series. A series with a box
is positive (SPEC section 1); an empty list documents an annotated negative. The keys never reach
the outputs. Every problem of the file is listed at once.

Writing is all-or-nothing: the cohort is built in a hidden folder beside ``DIR`` and renamed into
place at the end, under an exclusive lock (``.DIR.lock`` beside ``DIR``), so a failed or
interrupted run leaves ``DIR`` as it was, and a second run into the same ``DIR`` while one is
running stops at once with a clear error. ``--overwrite`` replaces a previous prepare-dicom output;
a folder holding anything else is never replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import DSAInputError, format_problems
from ...io.atomic import atomic_write_json, exclusive_lock
from .reader import (
    DEFAULT_MAX_DECODED_BYTES,
    SALT_ENV,
    SALT_FILE_ENV,
    DicomScan,
    SeriesPlan,
    resolve_salt,
    scan_dicom_input,
    user_salt_file,
)

COHORT_FILE = "cohort.json"
FRAMES_DIR = "frames"
_OUTPUT_ENTRIES = {COHORT_FILE, FRAMES_DIR}
_UID_KEY = re.compile(r"\d+(\.\d+)+")
_BOX_KEYS = {"frame", "bbox", "instance_id"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a DICOM file or a folder searched recursively")
    parser.add_argument("--out", required=True, help="output folder (cohort.json + frames/)")
    parser.add_argument("--boxes", help="JSON boxes file keyed by input file path or SeriesInstanceUID")
    parser.add_argument(
        "--salt",
        help=f"secret for the pseudonyms (default ${SALT_ENV}, else the per-user salt file ${SALT_FILE_ENV}, "
        "default ~/.config/perforation_d2/salt, created once)",
    )
    parser.add_argument("--cohort-name", default="dicom", help="the videos' 'cohort' value (default: dicom)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous prepare-dicom output in DIR")
    parser.add_argument(
        "--max-decoded-mib", type=float, default=DEFAULT_MAX_DECODED_BYTES / 2**20,
        help="refuse a series whose decoded pixels need more memory (default: %(default).0f)",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        scan, counts = _prepare(args, Path(args.input), out)
    except DSAInputError as err:
        raise DSAInputError(f"{err} Nothing was written to {out}.") from None
    series, frames, patients = counts
    print(
        f"prepare-dicom: wrote {series} series ({frames} frames, {patients} patients) to {out / COHORT_FILE}"
        + (f"; skipped {len(scan.skipped)} file(s)" if scan.skipped else "")
    )
    return 0


def _prepare(args: argparse.Namespace, input_path: Path, out: Path) -> tuple[DicomScan, tuple[int, int, int]]:
    if not input_path.exists():
        raise DSAInputError(f"{input_path}: no such file or folder (give a DICOM file or a folder of them).")
    if not args.cohort_name.strip():
        raise DSAInputError("--cohort-name must not be empty.")
    if not args.max_decoded_mib > 0:
        raise DSAInputError(f"--max-decoded-mib must be positive, got {args.max_decoded_mib}.")
    _check_out_dir(out, args.overwrite)
    boxes = _read_boxes(Path(args.boxes)) if args.boxes else None
    if args.salt is None and SALT_ENV not in os.environ:
        salt_file = user_salt_file().resolve()
        if salt_file == out.resolve() or out.resolve() in salt_file.parents:
            raise DSAInputError(
                f"{salt_file}: the pseudonymisation salt file lies inside the output folder {out}; keep it "
                f"elsewhere (${SALT_FILE_ENV}), or anyone given the folder could undo the pseudonyms."
            )
    salt = resolve_salt(args.salt)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DSAInputError(f"{out.parent}: cannot create the output's parent folder ({err.strerror}).") from None
    with _output_lock(out):
        _check_out_dir(out, args.overwrite)
        _remove_leftovers(out)
        scan = scan_dicom_input(input_path, salt, int(args.max_decoded_mib * 2**20))
        for reason in scan.skipped:
            print(reason, file=sys.stderr)
        annotations = _match_boxes(Path(args.boxes), boxes, scan) if boxes is not None else {}
        counts = _build_and_publish(scan, annotations, out, args.cohort_name)
    return scan, counts


# ---- output folder, lock, atomic publication ---------------------------------------------------
def _check_out_dir(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DSAInputError(f"{out}: exists and is not a folder; give a new or empty output folder.")
    entries = set(os.listdir(out))
    foreign = sorted(entries - _OUTPUT_ENTRIES)
    if foreign:
        raise DSAInputError(
            f"{out}: holds files prepare-dicom did not write ({', '.join(foreign[:5])}"
            + (", ..." if len(foreign) > 5 else "")
            + "); give a new or empty output folder, or move them away."
        )
    if COHORT_FILE in entries and not overwrite:
        raise DSAInputError(f"{out}: already holds a cohort; pass --overwrite to replace it.")


def _output_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """The exclusive lock ``.<DIR>.lock`` beside ``out`` (not inside: ``out`` is replaced by a
    rename). Non-blocking: a second run fails at once instead of waiting behind a long import."""
    return exclusive_lock(
        out.parent / f".{out.name}.lock", blocking=False,
        busy_message=f"{out}: another prepare-dicom run is writing this output folder right now; wait for it "
        "to finish, then run again.",
    )


def _remove_leftovers(out: Path) -> None:
    """Remove build folders of killed runs (only ever hidden names, never trusted by anything)."""
    for stale in out.parent.glob(f".{out.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}.replaced-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build_and_publish(
    scan: DicomScan, annotations: dict[str, list[dict]], out: Path, cohort_name: str
) -> tuple[int, int, int]:
    building = out.parent / f".{out.name}.building-{secrets.token_hex(4)}"
    building.mkdir()
    try:
        cohort = _write_frames_and_cohort(scan, annotations, building, cohort_name)
        atomic_write_json(building / COHORT_FILE, cohort)
        _fsync_dir(building)
        if out.exists():
            replaced = out.parent / f".{out.name}.replaced-{secrets.token_hex(4)}"
            os.rename(out, replaced)
            os.rename(building, out)
            shutil.rmtree(replaced, ignore_errors=True)
        else:
            os.rename(building, out)
        _fsync_dir(out.parent)
    except OSError as err:
        shutil.rmtree(building, ignore_errors=True)
        raise DSAInputError(f"{out}: writing the output failed ({err.strerror or type(err).__name__}).") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    patients = {video["patient_id"] for video in cohort["videos"]}
    return len(cohort["videos"]), len(cohort["images"]), len(patients)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_png(path: Path, frame: np.ndarray) -> None:
    """Write an 8-bit grey PNG and flush it to disk, so that the renamed folder is complete even
    after a power loss (the folder itself is fsynced before the rename)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def _write_frames_and_cohort(
    scan: DicomScan, annotations: dict[str, list[dict]], building: Path, cohort_name: str
) -> dict[str, Any]:
    videos, images, boxes = [], [], []
    for video_id, (plan, series) in enumerate(zip(scan.plans, scan.iter_series()), start=1):
        folder = building / FRAMES_DIR / series.series_key
        folder.mkdir(parents=True)
        first_image_id = len(images) + 1
        for frame_id, frame in enumerate(series.frames):
            name = f"{frame_id:03d}.png"
            _write_png(folder / name, frame)
            images.append({
                "id": len(images) + 1, "file_name": f"{FRAMES_DIR}/{series.series_key}/{name}",
                "video_id": video_id, "frame_id": frame_id, "width": series.width, "height": series.height,
            })
        _fsync_dir(folder)
        videos.append({
            "id": video_id, "name": series.series_key, "width": series.width, "height": series.height,
            "patient_id": series.pseudo_patient_id, "cohort": cohort_name, "num_frames": len(series.frames),
            "frame_time_ms": series.frame_time_ms,
        })
        for box in annotations.get(plan.series_key, []):
            x, y, w, h = box["bbox"]
            boxes.append({
                "id": len(boxes) + 1, "image_id": first_image_id + box["frame"], "video_id": video_id,
                "category_id": 1, "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
                "instance_id": video_id * 1000 + box["instance_id"],
            })
    _fsync_dir(building / FRAMES_DIR)
    return {
        "info": {
            "description": "DICOM XA/XRF series imported by perforation_d2 prepare-dicom",
            "pixel_pipeline": "perforation_d2.data.dicom.reader (module docstring)",
            "skipped_files": len(scan.skipped),
        },
        "videos": videos,
        "images": images,
        "annotations": boxes,
        "categories": [{"id": 1, "name": "perforation"}],
    }


# ---- boxes file ------------------------------------------------------------------------------
def _read_boxes(path: Path) -> dict[str, list[dict]]:
    """Parse and check the boxes file's structure (matching against the input comes later)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DSAInputError(f"{path}: the boxes file does not exist.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DSAInputError(f"{path}: cannot read the boxes file ({type(err).__name__}).") from None
    except json.JSONDecodeError as err:
        raise DSAInputError(
            f"{path}: is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); the boxes file maps "
            'an input file path to a list of {"frame": i, "bbox": [x, y, w, h]}.'
        ) from None
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
                problems.append(f"{where}: 'frame' must be a non-negative integer, got {frame!r}")
            if not _is_int(instance) or not 0 <= instance < 1000:
                problems.append(f"{where}: 'instance_id' must be an integer 0-999, got {instance!r}")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                problems.append(f"{where}: 'bbox' must be [x, y, w, h], four finite numbers, got {bbox!r}")
            elif bbox[2] <= 0 or bbox[3] <= 0:
                problems.append(f"{where}: non-positive box size {bbox[2]} x {bbox[3]}")
            elif bbox[0] < 0 or bbox[1] < 0:
                problems.append(f"{where}: box {bbox} starts outside the image")
            checked.append({"frame": frame, "bbox": bbox, "instance_id": instance})
        boxes[key] = checked
    if problems:
        raise DSAInputError(format_problems(str(path), problems))
    return boxes


def _match_boxes(path: Path, boxes: dict[str, list[dict]], scan: DicomScan) -> dict[str, list[dict]]:
    """``{series key: [{"frame": series frame, "bbox", "instance_id"}]}``; every mismatch is an error."""
    root = scan.root if scan.root.is_dir() else scan.root.parent
    by_file: dict[str, tuple[SeriesPlan, int, int]] = {}
    for plan in scan.plans:
        offset = 0
        for header in plan.files:
            by_file[header.path.relative_to(root).as_posix()] = (plan, offset, header.num_frames)
            offset += header.num_frames
    problems, matched = [], {}
    for number, (key, entries) in enumerate(boxes.items(), start=1):
        label = _key_label(key, number)
        if key in by_file:
            plan, offset, frames = by_file[key]
        else:
            plans = [p for p in scan.plans if _UID_KEY.fullmatch(key) and p.has_series_uid(key)]
            if len(plans) != 1:
                if root / key in scan.skipped_files:
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
    return f"key #{number} (a UID)" if _UID_KEY.fullmatch(key) else f"key {key!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
