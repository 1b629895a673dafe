"""DICOM results of a series prediction, the objects hospital viewers and PACS already show.

For one series: a Comprehensive SR (TID 1500: finding, score, threshold, the box on the key
frame, the tracked trajectory, the algorithm and its operating point), a Secondary Capture of the
key frame with the detection burned in, and optionally a Grayscale Softcopy Presentation State.
All are built with highdicom from the source instances' headers.

Identity: these objects, and only these, carry the source's patient and study identifiers (so
that a PACS files them with the images); every other output of the project stays pseudonymised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..data.dicom.dataset import quiet_pydicom
from ..io.atomic import atomic_write_bytes
from .captures import build_presentation_state, build_secondary_capture
from .sources import Algorithm, SeriesFinding, SourceImages
from .structured_report import build_structured_report

__all__ = [
    "Algorithm", "DicomResult", "SeriesFinding", "SourceImages", "build_dicom_results", "encode", "result_names",
    "write_dicom_results",
]

SR_SUFFIX, SC_SUFFIX, PR_SUFFIX = "_SR.dcm", "_SC.dcm", "_PR.dcm"


@dataclass
class DicomResult:
    """One result object and the file name suffix it is stored under."""

    suffix: str
    dataset: Dataset


def result_names(stem: str, gsps: bool) -> list[str]:
    """The file names :func:`write_dicom_results` writes for ``stem``."""
    return [stem + suffix for suffix in (SR_SUFFIX, SC_SUFFIX, *((PR_SUFFIX,) if gsps else ()))]


def build_dicom_results(
    finding: SeriesFinding, sources: SourceImages, frames: np.ndarray, algorithm: Algorithm, gsps: bool = False
) -> list[DicomResult]:
    """SR and Secondary Capture (and GSPS when ``gsps``) of one series, with new UIDs.

    Built with pydicom's warnings silenced: they may quote the identifying values copied from the
    source, and must not reach a console or log.
    """
    with quiet_pydicom():
        results = [
            DicomResult(SR_SUFFIX, build_structured_report(finding, sources, algorithm)),
            DicomResult(SC_SUFFIX, build_secondary_capture(finding, sources, frames, algorithm)),
        ]
        if gsps:
            results.append(DicomResult(PR_SUFFIX, build_presentation_state(finding, sources, algorithm)))
    return results


def encode(dataset: Dataset) -> bytes:
    """``dataset`` as the bytes of a DICOM Part 10 file."""
    buffer = BytesIO()
    with quiet_pydicom():
        dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom_results(
    folder: str | os.PathLike, stem: str, results: list[DicomResult], overwrite: bool = False
) -> list[Path]:
    """Write each result as a DICOM Part 10 file ``folder/<stem><suffix>``, atomically."""
    paths = []
    for result in results:
        path = Path(folder) / (stem + result.suffix)
        atomic_write_bytes(path, encode(result.dataset), overwrite=overwrite)
        paths.append(path)
    return paths
