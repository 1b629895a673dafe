"""Input discovery for ``predict``: the series of a cohort JSON, a DICOM file or a folder of DICOM files.

Each series becomes a :class:`SeriesSource` whose frames are read only when it is predicted, so
a large folder is processed one series at a time. For a cohort JSON the video and image ids are
the cohort's; for DICOM input the series are numbered 1, 2, ... in the reader's order, frames get
consecutive image ids, ``name`` is the pseudonymised series key and ``patient_id`` the salted
patient hash. A folder yields every usable series; every file left out is listed with its reason
(:attr:`FoundSeries.skipped`), and ``strict`` turns any skip into an error before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dicom import DicomScan, scan_dicom_input
from ..errors import DSAInputError


@dataclass
class SeriesSource:
    """One series to predict; ``load()`` returns its frames ``(F, H, W)`` uint8 and frame time, or None
    when the series of a DICOM folder cannot be decoded (then it is listed among the skipped files)."""

    video_id: int
    name: str
    patient_id: str
    num_frames: int
    image_ids: list[int]
    load: Callable[[], tuple[np.ndarray, float | None] | None]


@dataclass
class FoundSeries:
    """The series of an input, and (DICOM input) the scan that lists the files left out."""

    sources: list[SeriesSource]
    scan: DicomScan | None = None

    @property
    def skipped(self) -> list[str]:
        """Every file left out so far, as "path: skipped, reason" (series that fail to decode are added)."""
        return self.scan.skipped if self.scan is not None else []


def _cohort_sources(json_file: Path) -> list[SeriesSource]:
    from ..data.cohort import default_image_root, frames_by_video, load_cohort
    from ..data.register import cohort_dataset_dicts
    from ..modeling.series_inference import load_series_frames

    cohort = load_cohort(json_file)
    frames = frames_by_video(cohort)
    first_record = {}  # video id -> its first frame's dataset dict (it lists the series' files)
    for record in cohort_dataset_dicts(cohort, default_image_root(json_file)):
        first_record.setdefault(record["video_id"], record)

    def loader(video: dict) -> Callable[[], tuple[np.ndarray, float | None]]:
        def load() -> tuple[np.ndarray, float | None]:
            return load_series_frames(first_record[video["id"]]), video.get("frame_time_ms")

        return load

    return [
        SeriesSource(
            video_id=video["id"], name=video["name"], patient_id=video["patient_id"],
            num_frames=len(frames[video["id"]]), image_ids=[image["id"] for image in frames[video["id"]]],
            load=loader(video),
        )
        for video in cohort["videos"]
        if frames[video["id"]]
    ]


def _dicom_sources(path: Path, salt: str | None, strict: bool) -> FoundSeries:
    scan = scan_dicom_input(path, salt)
    sources = []
    next_image_id = 1
    for index, plan in enumerate(scan.plans):

        def load(plan=plan) -> tuple[np.ndarray, float | None] | None:
            # --strict: an undecodable series is an error (nothing is written); else a skip.
            series = scan.read(plan) if strict else scan.read_or_skip(plan)
            return None if series is None else (series.frames, series.frame_time_ms)

        sources.append(SeriesSource(
            video_id=index + 1, name=plan.series_key, patient_id=plan.pseudo_patient_id,
            num_frames=plan.num_frames,
            image_ids=list(range(next_image_id, next_image_id + plan.num_frames)), load=load,
        ))
        next_image_id += plan.num_frames
    return FoundSeries(sources, scan)


def find_series(path: str | os.PathLike, salt: str | None = None, strict: bool = False) -> FoundSeries:
    """The series at ``path``: a cohort JSON, a DICOM file or a folder of DICOM files.

    With ``strict`` a folder in which any file was skipped is a :class:`DSAInputError` listing
    every skipped file and its reason.
    """
    path = Path(path)
    if not path.exists():
        raise DSAInputError(
            f"{path}: no such file or folder; --input takes a DICOM file, a folder of DICOM files "
            "or a cohort JSON."
        )
    if path.is_file() and path.suffix.lower() == ".json":
        found = FoundSeries(_cohort_sources(path))
    else:
        found = _dicom_sources(path, salt, strict)
        problems = found.scan.strict_problems() if strict else None
        if problems:
            raise DSAInputError(f"{problems} --strict refuses an input with skipped files; nothing was written.")
    if not found.sources:
        skipped = found.skipped
        detail = (f" ({len(skipped)} file(s) skipped: " + "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
                  + ")") if skipped else ""
        raise DSAInputError(f"{path}: no series with frames to predict{detail}.")
    return found
