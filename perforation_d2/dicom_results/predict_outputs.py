"""``predict --dicom-out``: the DICOM results of each DICOM series, written with predict's other outputs.

For every series read from DICOM files, ``dicom/<video_id>_<name>_SR.dcm`` and ``..._SC.dcm``
(and ``..._PR.dcm`` with GSPS) join ``predict``'s output set, so they are listed in its manifest
and published all at once with the JSON files and overlays. A series from a cohort JSON has no
source instances to refer to and gets none. These files carry the source's patient and study
identifiers (they are meant to be sent to the hospital's PACS); predict's other outputs do not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.dicom import scan_dicom_input
from . import Algorithm, SeriesFinding, SourceImages, build_dicom_results, encode

if TYPE_CHECKING:
    from ..engine.operating_point import Threshold
    from ..evaluation.predictions import SeriesResult
    from ..inference.sources import SeriesSource

DICOM_DIR = "dicom"


def dicom_stem(source: SeriesSource) -> str:
    """``dicom/<video_id>_<name>``: the overlays' naming, so a series' files sort together."""
    from ..inference.result import overlay_names

    return f"{DICOM_DIR}/{Path(overlay_names(source)[0]).stem}"


@dataclass
class DicomOutputs:
    """Writes the DICOM results of each predicted DICOM series into ``outputs`` (anything with
    ``write_bytes(name, data)``: an output transaction, or a worker's series files)."""

    outputs: object
    threshold: Threshold
    algorithm: Algorithm
    instances: dict[str, list[tuple[Path, int]]]  # series name -> (instance file, frames in it), in order
    gsps: bool = False

    def __call__(self, source: SeriesSource, frames: np.ndarray, result: SeriesResult) -> None:
        files = self.instances.get(source.name)
        if files is None:  # not a DICOM series: no instances to refer to
            return
        finding = SeriesFinding.of(result, self.threshold)
        stem = dicom_stem(source)
        for dicom_result in build_dicom_results(finding, SourceImages.of_files(files), frames, self.algorithm, self.gsps):
            self.outputs.write_bytes(stem + dicom_result.suffix, encode(dicom_result.dataset))


def dicom_outputs(outputs, threshold: Threshold, cfg, weights: str, input_path: str | os.PathLike,
                  salt: str | None, gsps: bool = False) -> DicomOutputs | None:
    """The per-series callback of ``predict --dicom-out``; None for a cohort JSON input.

    The series' instance files come from a second header pass over the input (no pixels are
    decoded): the same scan ``predict`` made, so the series names are the same pseudonyms.
    """
    path = Path(input_path)
    if path.is_file() and path.suffix.lower() == ".json":
        return None
    scan = scan_dicom_input(path, salt)
    instances = {plan.series_key: [(header.path, header.num_frames) for header in plan.files] for plan in scan.plans}
    return DicomOutputs(outputs, threshold, Algorithm.of_model(cfg, weights), instances, gsps)
