"""The source images a DICOM result refers to, and what the model found in them.

A result object (SR, Secondary Capture, presentation state) refers to the instances it was
computed from by SOP Class / Instance UID and frame number, and carries their patient and study
modules, so that a PACS files it with the images. This module reads those headers (never the
pixels) and maps each frame of a series to its instance and 1-based frame number. It is the one
place besides the DICOM results themselves where identifying attributes are held in memory; none
of them is ever logged or written anywhere else.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from ..data.dicom.dataset import quiet_pydicom, read_dataset
from ..errors import DSAInputError

if TYPE_CHECKING:
    from ..engine.operating_point import Threshold
    from ..evaluation.predictions import SeriesResult


@dataclass(frozen=True)
class SeriesFinding:
    """What the model found in one series, in original-frame pixels, frames numbered from 0.

    ``boxes_xyxy`` / ``scores`` hold one entry per frame (None where series optimisation kept no
    detection): the surviving trajectory. ``key_frame`` is the frame a reader is shown first
    (the trajectory's highest raw score, else the middle frame).
    """

    score: float
    threshold: float
    operating_point: str
    series_optimization: bool
    key_frame: int
    boxes_xyxy: Sequence[Sequence[float] | None]
    scores: Sequence[float | None]

    @classmethod
    def of(cls, result: SeriesResult, threshold: Threshold) -> SeriesFinding:
        """The finding of ``predict_one_series``'s result, decided at ``threshold``."""
        key = result.frame_of_max if result.frame_of_max is not None else len(result.boxes_xyxy) // 2
        return cls(score=float(result.score), threshold=float(threshold.value), operating_point=threshold.method,
                   series_optimization=threshold.series_optimization, key_frame=key,
                   boxes_xyxy=list(result.boxes_xyxy), scores=list(result.scores))

    @property
    def present(self) -> bool:
        return self.score >= self.threshold

    @property
    def key_box(self) -> Sequence[float] | None:
        return self.boxes_xyxy[self.key_frame]

    @property
    def trajectory(self) -> list[int]:
        """The frames (0-based) that hold a box of the surviving trajectory."""
        return [t for t, box in enumerate(self.boxes_xyxy) if box is not None]


@dataclass(frozen=True)
class Algorithm:
    """The algorithm identification written into every result (name and version)."""

    name: str
    version: str

    @classmethod
    def of_model(cls, cfg, weights: str | os.PathLike) -> Algorithm:
        """The model's architecture as name; the package version and the weights' digest as version."""
        from .. import __version__

        sha = hashlib.sha256()
        with open(weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        return cls(name=f"perforation_d2 {cfg.MODEL.META_ARCHITECTURE}",
                   version=f"{__version__} weights-sha256:{sha.hexdigest()[:12]}")


@dataclass
class SourceImages:
    """The headers of a series' instances and, per frame, ``(instance index, frame index)``."""

    datasets: list[Dataset]
    frame_sources: list[tuple[int, int]]

    @classmethod
    def read(cls, files: Sequence[str | os.PathLike], frame_sources: Sequence[tuple[int, int]]) -> SourceImages:
        """The headers of ``files`` (``DicomSeries.source_files``) with ``DicomSeries.frame_sources``."""
        datasets = []
        for path in files:
            try:
                with quiet_pydicom():
                    datasets.append(read_dataset(Path(path), stop_before_pixels=True))
            except DSAInputError:
                raise
            except Exception as err:  # the reader decoded this file moments ago: it changed since
                raise DSAInputError(f"{Path(path)}: cannot be read again for the DICOM results ({type(err).__name__}).") from None
            if not datasets[-1].get("StudyInstanceUID"):
                raise DSAInputError(f"{Path(path)}: has no StudyInstanceUID, so no DICOM result could be filed with "
                                    "its study; the sender must fill it in.")
            _complete_type2(datasets[-1])
        return cls(datasets, list(frame_sources))

    @classmethod
    def of_files(cls, files: Sequence[tuple[str | os.PathLike, int]]) -> SourceImages:
        """The headers of a series given as ``(instance file, frames in it)`` in series order."""
        return cls.read([path for path, _ in files],
                        [(i, k) for i, (_, count) in enumerate(files) for k in range(count)])

    @property
    def first(self) -> Dataset:
        return self.datasets[0]

    def frame(self, index: int) -> tuple[Dataset, int | None]:
        """The instance holding frame ``index`` (0-based) of the series, and its 1-based frame
        number within that instance (None for a single-frame instance, which has no frames to number)."""
        file_index, frame_index = self.frame_sources[index]
        dataset = self.datasets[file_index]
        return dataset, (frame_index + 1 if is_multi_frame(dataset) else None)


# Type 2 attributes (present, possibly empty) of the Patient, General Study and General Series
# modules that the results copy: a modality may leave them out, which highdicom cannot copy.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber")


def _complete_type2(dataset: Dataset) -> None:
    for keyword in _TYPE2_COPIED:
        if keyword not in dataset:
            setattr(dataset, keyword, None)


def is_multi_frame(dataset: Dataset) -> bool:
    return "NumberOfFrames" in dataset and dataset.NumberOfFrames not in (None, "")
