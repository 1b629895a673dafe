"""A Comprehensive SR (TID 1500 Measurement Report) of one series' finding, built with highdicom.

Content, all under one Tracking Unique Identifier per series (the trajectory is one finding
followed through the frames):

* the series-level group: finding type "vessel perforation", the qualitative evaluation
  "Presence of property" = Present / Absent (series score >= decision threshold), the series
  score and the decision threshold as measurements (no units), and the algorithm's name,
  version and parameters (operating point, threshold, series optimisation). When the model kept a
  detection this group is a planar ROI group whose region is the box on the key frame, a closed
  POLYLINE SCOORD referring to the source instance (``ReferencedFrameNumber`` = key frame + 1 for
  a multi-frame instance);
* one planar ROI group per other frame of the surviving trajectory, with that frame's box and
  score: the tracking of the finding through the run.

The SR copies the source's patient and study modules (so that it files with the images) and its
InstitutionName (the SR Document Series module has no OperatorsName; the Secondary Capture carries it).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .sources import Algorithm, SeriesFinding, SourceImages

# Concepts without a standard code get one of this private coding scheme ("99" prefix, PS3.16 8.2).
PRIVATE_SCHEME = "99PERFD2"
VESSEL_PERFORATION = Code("PERF-001", PRIVATE_SCHEME, "Vessel perforation")
DETECTION_SCORE = Code("PERF-002", PRIVATE_SCHEME, "Perforation detection score")
TRACKING_TEXT = "perforation trajectory"
SR_SERIES_NUMBER = 9901
SERIES_DESCRIPTION_SR = "perforation_d2 findings (research use)"


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    return [CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name="perforation_d2 concepts", responsible_organization="perforation_d2")]


def algorithm_identification(algorithm: Algorithm, finding: SeriesFinding) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[
            f"operating point {finding.operating_point}",
            f"decision threshold {finding.threshold:.6g}",
            f"series optimisation {'on' if finding.series_optimization else 'off'}",
        ],
    )


def box_polyline(box_xyxy: Sequence[float]) -> np.ndarray:
    """A box as a closed polyline (first point repeated last) in image coordinates (column, row)."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


def _region(sources: SourceImages, frame: int, box_xyxy: Sequence[float]) -> hd.sr.ImageRegion:
    dataset, frame_number = sources.frame(frame)
    source = hd.sr.SourceImageForRegion.from_source_image(
        dataset, referenced_frame_numbers=None if frame_number is None else [frame_number])
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                             graphic_data=box_polyline(box_xyxy), source_image=source)


def _score(name: Code, value: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=codes.UCUM.NoUnits)


def measurement_groups(
    finding: SeriesFinding, sources: SourceImages, algorithm: Algorithm, tracking_uid: str
) -> list:
    """The TID 1500 measurement groups of ``finding`` (module docstring)."""
    tracking = hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=TRACKING_TEXT)
    algorithm_id = algorithm_identification(algorithm, finding)
    presence = hd.sr.QualitativeEvaluation(
        name=codes.DCM.PresenceOfProperty, value=codes.SCT.Present if finding.present else codes.SCT.Absent)
    series_measurements = [
        _score(DETECTION_SCORE, finding.score),
        _score(codes.DCM.ThresholdValue, finding.threshold),
    ]
    common = {"tracking_identifier": tracking, "finding_type": VESSEL_PERFORATION, "algorithm_id": algorithm_id}
    if finding.key_box is None:
        return [hd.sr.MeasurementsAndQualitativeEvaluations(
            **common, measurements=series_measurements, qualitative_evaluations=[presence])]
    groups = [hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        **common, referenced_region=_region(sources, finding.key_frame, finding.key_box),
        measurements=series_measurements, qualitative_evaluations=[presence])]
    for frame in finding.trajectory:
        if frame == finding.key_frame:
            continue
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            **common, referenced_region=_region(sources, frame, finding.boxes_xyxy[frame]),
            measurements=[_score(DETECTION_SCORE, finding.scores[frame])]))
    return groups


def build_structured_report(
    finding: SeriesFinding, sources: SourceImages, algorithm: Algorithm, *,
    series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
) -> Dataset:
    """The Comprehensive SR of ``finding`` on ``sources`` (new UIDs unless given)."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm.name, manufacturer_name="perforation_d2", model_name=algorithm.name),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.Angiography,
        imaging_measurements=measurement_groups(finding, sources, algorithm, hd.UID()),
    )
    first = sources.first
    return hd.sr.ComprehensiveSR(
        evidence=sources.datasets,
        content=report,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer="perforation_d2",
        institution_name=first.get("InstitutionName") or None,
        series_description=SERIES_DESCRIPTION_SR,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=coding_schemes(),
        software_versions=algorithm.version,
        is_complete=True,
    )
