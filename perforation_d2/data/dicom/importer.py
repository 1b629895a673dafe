"""DICOM XA/XRF series -> a cohort folder (PNG frames + ``cohort.json``): the library behind ``prepare-dicom``.

:func:`prepare_dicom` reads every XA/XRF series at the input (a file, or a folder; see
:mod:`perforation_d2.data.dicom`), matches the boxes file (:mod:`.boxes`) and writes::

    DIR/cohort.json                      one video per series, frame files relative to DIR
    DIR/frames/<video name>/000.png ...  8-bit grey PNG, one per frame, in series order

A video's ``name`` is its pseudonymised series key and its ``patient_id`` the salted hash of the
PatientID; no header value other than image size and frame time, and no salt, reaches ``DIR``
(a salt file inside ``DIR`` is refused). Every file left out of a folder is printed with its
reason and listed, pseudonymised, in ``cohort.json``'s ``info.skipped``; ``strict`` makes any
skip a failure instead. The folder is written all-or-nothing through one
:class:`~perforation_d2.io.transaction.OutputTransaction` (whole folder, durable, locked).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import DSAInputError
from ...io.transaction import OutputTransaction
from ..cohort_writer import CohortWriter
from .boxes import match_boxes, read_boxes
from .dataset import shown_path
from .pseudonyms import SALT_ENV, SALT_FILE_ENV, resolve_salt, user_salt_file
from .scan import DEFAULT_MAX_DECODED_BYTES, DicomScan, scan_dicom_input

COMMAND = "prepare-dicom"


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`prepare_dicom` wrote: counts, and the printable skip messages."""

    series: int
    frames: int
    patients: int
    skipped: list[str]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def prepare_dicom(
    input_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    boxes_file: str | os.PathLike | None = None,
    salt: str | None = None,
    cohort_name: str = "dicom",
    overwrite: bool = False,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    strict: bool = False,
    log: Callable[[str], None] = _stderr,
) -> ImportSummary:
    """Import ``input_path`` into the cohort folder ``out`` (module docstring); ``log`` gets each
    skip message as it is found. Raises :class:`DSAInputError` for bad input, leaving ``out`` as it was."""
    input_path, out = Path(input_path), Path(out)
    if not input_path.exists():
        raise DSAInputError(f"{shown_path(input_path)}: no such file or folder (give a DICOM file or a folder of them).")
    if not cohort_name.strip():
        raise DSAInputError("--cohort-name must not be empty.")
    transaction = OutputTransaction(out, COMMAND, overwrite, whole_folder=True, durable=True)
    boxes = read_boxes(Path(boxes_file)) if boxes_file is not None else None
    if salt is None and SALT_ENV not in os.environ:
        salt_file = user_salt_file().resolve()
        if salt_file == out.resolve() or out.resolve() in salt_file.parents:
            raise DSAInputError(
                f"{salt_file}: the pseudonymisation salt file lies inside the output folder {shown_path(out)}; keep "
                f"it elsewhere (${SALT_FILE_ENV}), or anyone given the folder could undo the pseudonyms."
            )
    salt = resolve_salt(salt)
    with transaction:
        scan = scan_dicom_input(input_path, salt, max_decoded_bytes)
        for message in scan.skipped:
            log(message)
        if strict and scan.skips:
            raise DSAInputError(scan.strict_problems() + " (--strict: any skipped file is a failure)")
        annotations = match_boxes(Path(boxes_file), boxes, scan) if boxes is not None else {}
        writer = _write_series(scan, annotations, transaction, cohort_name, strict, log)
        if not writer.videos:
            raise scan.nothing_to_import()
        writer.info = {
            "description": "DICOM XA/XRF series imported by perforation_d2 prepare-dicom",
            "pixel_pipeline": "perforation_d2.data.dicom (package docstring)",
            "skipped_files": len(scan.skips),
            "skipped": scan.skip_records(),
        }
        writer.write()
    patients = {video["patient_id"] for video in writer.videos}
    return ImportSummary(len(writer.videos), len(writer.images), len(patients), scan.skipped)


def _write_series(
    scan: DicomScan, annotations: dict[str, list[dict]], transaction: OutputTransaction, cohort_name: str,
    strict: bool, log: Callable[[str], None],
) -> CohortWriter:
    """Decode the series one at a time and add each to the cohort (a folder's undecodable series
    is skipped and logged, unless ``strict``)."""
    writer = CohortWriter(transaction)
    for plan in scan.plans:
        known = len(scan.skips)
        series = scan.read(plan) if strict else scan.read_or_skip(plan)
        if series is None:
            for skip in scan.skips[known:]:
                log(skip.message)
            if plan.series_key in annotations:
                log(f"{shown_path(plan.files[0].path)}: its {len(annotations[plan.series_key])} box(es) are left out "
                    "with the series.")
            continue
        video_id = writer.add_video(series.series_key, series.width, series.height, series.pseudo_patient_id,
                                    cohort_name, series.frame_time_ms)
        image_ids = [writer.add_frame(video_id, frame) for frame in series.frames]
        for box in annotations.get(plan.series_key, []):
            writer.add_box(image_ids[box["frame"]], box["bbox"], video_id * 1000 + box["instance_id"])
    return writer
