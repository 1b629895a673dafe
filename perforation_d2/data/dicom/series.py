"""A decoded series (:class:`DicomSeries`) and the one-call reading API ``read_dicom_series``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dataset import quiet_pydicom
from .decode import decode_series
from .pseudonyms import UidCheck
from .scan import DEFAULT_MAX_DECODED_BYTES, DicomSeriesPlan, scan_dicom_input


@dataclass
class DicomSeries:
    """One acquisition run, decoded and windowed to 8 bit (see :mod:`perforation_d2.data.dicom`).

    ``frames`` is ``uint8 (F, H, W)``. ``source_files`` are the files the frames came from, in
    series order, and ``frame_sources[i] = (file index, frame index within that file)``.
    ``skipped`` holds the reason for every input file the read left out ("path: skipped, why").
    Identifiers are pseudonyms.
    """

    frames: np.ndarray
    frame_time_ms: float | None
    pseudo_patient_id: str
    series_key: str
    source_files: list[Path]
    skipped: list[str]
    frame_sources: list[tuple[int, int]]
    windowing: str
    intensity_relationship: str | None
    _uid_check: UidCheck = field(repr=False)

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def has_series_uid(self, uid: str) -> bool:
        """Whether ``uid`` is this series' SeriesInstanceUID (the UID itself is not kept)."""
        return self._uid_check.matches(uid)


def read_series(plan: DicomSeriesPlan, skipped: list[str]) -> DicomSeries:
    """Decode and window the series ``plan`` (pydicom kept quiet throughout)."""
    with quiet_pydicom():
        frames, decoded, window = decode_series(plan.files, plan.num_frames)
    first = decoded[0]
    return DicomSeries(
        frames=frames,
        frame_time_ms=first.frame_time_ms,
        pseudo_patient_id=plan.pseudo_patient_id,
        series_key=plan.series_key,
        source_files=plan.source_files,
        skipped=skipped,
        frame_sources=[(i, k) for i, header in enumerate(plan.files) for k in range(header.num_frames)],
        windowing=window.description,
        intensity_relationship=first.intensity_relationship,
        _uid_check=plan._uid_check,
    )


def read_dicom_series(
    path: str | os.PathLike,
    salt: str | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> list[DicomSeries]:
    """Every XA/XRF series at ``path`` (a file, or a folder searched recursively), decoded to 8 bit.

    ``salt`` defaults to ``$PERFORATION_D2_SALT``, else the per-user salt file (see
    :func:`~perforation_d2.data.dicom.resolve_salt`). Files left out are listed in each series'
    ``skipped``; in a folder, a series that cannot be decoded is left out the same way.
    """
    scan = scan_dicom_input(path, salt, max_decoded_bytes)
    series = [scan.read_or_skip(plan) for plan in scan.plans]
    kept = [s for s in series if s is not None]
    if not kept:
        raise scan.nothing_to_import()
    for item in kept:
        item.skipped = scan.skipped
    return kept
