"""DICOM results of one series (SR TID 1500, Secondary Capture, GSPS), read back by independent tools.

The finding is written by hand here (boxes, scores, key frame), so every expected value is known
without the model. Each object is read back with highdicom / pydicom, parsed by DCMTK's dsrdump
and checked by dicom3tools' dciodvfy.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from helpers.dicom_factory import make_identity, ramp_frames, write_single_frame_series, write_xa
from helpers.dicom_network import run_tool
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from perforation_d2.data.dicom import read_dicom_series
from perforation_d2.dicom_results import (
    Algorithm,
    SeriesFinding,
    SourceImages,
    build_dicom_results,
    result_names,
    write_dicom_results,
)
from perforation_d2.engine.operating_point import Threshold
from perforation_d2.evaluation.predictions import SeriesResult

# The private concept of the series / detection score (99PERFD2 is the project's coding scheme).
SCORE = Code("PERF-002", "99PERFD2", "Perforation detection score")
ALGORITHM = Algorithm("perforation_d2 test", "0.0-test")
SALT = "results-test-salt"


def identity(index: int) -> dict[str, str]:
    return {**make_identity(index), "OperatorsName": f"Thistlewood{index}^Operator", "StudyID": f"ST{index}"}


def trajectory_finding(num_frames: int, first: int, key: int, score: float = 0.8, threshold: float = 0.5) -> SeriesFinding:
    boxes = [None] * num_frames
    scores = [None] * num_frames
    for t in range(first, num_frames):
        boxes[t] = [4.0 + t, 5.5, 20.0 + t, 21.0]
        scores[t] = score
    return SeriesFinding(score=score, threshold=threshold, operating_point="youden", series_optimization=True,
                         key_frame=key, boxes_xyxy=boxes, scores=scores)


@pytest.fixture
def series(tmp_path):
    """A multi-frame XA run (6 frames) and a single-frame series (3 files), decoded by the reader."""
    write_xa(tmp_path / "dicom" / "run.dcm", ramp_frames(6, 48), identity=identity(0), frame_time=100.0)
    write_single_frame_series(tmp_path / "dicom" / "single", ramp_frames(3, 40), identity=identity(1))
    found = {len(s.frames): s for s in read_dicom_series(tmp_path / "dicom", SALT)}
    return found[6], found[3]


def planar_groups(path):
    sr = hd.sr.srread(path)
    return sr, sr.content.get_planar_roi_measurement_groups()


def measurement(group, name) -> float:
    values = [m.value for m in group.get_measurements() if m.name == name]
    assert len(values) == 1
    return values[0]


def test_sr_gives_box_frame_score_threshold_and_trajectory_of_a_multi_frame_run(series, tmp_path):
    run, _ = series
    finding = trajectory_finding(6, first=2, key=4)
    sources = SourceImages.read(run.source_files, run.frame_sources)
    paths = write_dicom_results(tmp_path / "out", "S-test", build_dicom_results(finding, sources, run.frames, ALGORITHM))
    assert [p.name for p in paths] == result_names("S-test", gsps=False)
    sr, groups = planar_groups(paths[0])
    source = pydicom.dcmread(run.source_files[0], stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert len(groups) == 4  # the key frame and the three other frames of the trajectory
    key = groups[0]
    np.testing.assert_allclose(key.roi.value, [[8, 5.5], [24, 5.5], [24, 21], [8, 21], [8, 5.5]])
    assert key.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    reference = key.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert int(reference.ReferencedFrameNumber) == 5  # key frame 4 (0-based) + 1
    assert measurement(key, SCORE) == pytest.approx(0.8)
    assert measurement(key, codes.DCM.ThresholdValue) == pytest.approx(0.5)
    (presence,) = key.get_qualitative_evaluations()
    assert presence.name == codes.DCM.PresenceOfProperty and presence.value == codes.SCT.Present
    # The trajectory: the same tracking UID on every frame's box, frames 3, 4, 6 (1-based) besides the key.
    assert {g.tracking_uid for g in groups} == {key.tracking_uid}
    frames = [int(g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber) for g in groups[1:]]
    assert frames == [3, 4, 6]
    # The algorithm and its operating point, and the source's identity (so it files with the images).
    dump = run_tool("dsrdump", str(paths[0]))
    assert dump.returncode == 0, dump.stderr
    for text in ("perforation_d2 test", "0.0-test", "operating point youden", "decision threshold 0.5"):
        assert text in dump.stdout
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
                    "InstitutionName"):
        assert str(sr[keyword].value) == str(source[keyword].value), keyword
    assert "OperatorsName" not in sr  # not in the SR Document Series module: the capture carries it


def test_sr_without_detection_says_absent_without_a_region(series, tmp_path):
    run, _ = series
    finding = SeriesFinding(score=0.0, threshold=0.5, operating_point="spec95", series_optimization=True,
                            key_frame=3, boxes_xyxy=[None] * 6, scores=[None] * 6)
    sources = SourceImages.read(run.source_files, run.frame_sources)
    paths = write_dicom_results(tmp_path, "S-none", build_dicom_results(finding, sources, run.frames, ALGORITHM))
    sr, planar = planar_groups(paths[0])
    assert planar == []
    (group,) = sr.content.get_image_measurement_groups()
    assert measurement(group, SCORE) == 0.0 and measurement(group, codes.DCM.ThresholdValue) == 0.5
    assert group.get_qualitative_evaluations()[0].value == codes.SCT.Absent
    dump = run_tool("dsrdump", str(paths[0])).stdout
    assert '"Presence of property")=(272519000,SCT,"Absent")' in dump
    assert "SCOORD" not in dump


def test_single_frame_series_refers_to_the_key_frames_own_instance(series, tmp_path):
    _, single = series
    finding = trajectory_finding(3, first=0, key=1)
    sources = SourceImages.read(single.source_files, single.frame_sources)
    paths = write_dicom_results(tmp_path, "S-single", build_dicom_results(finding, sources, single.frames, ALGORITHM))
    _, groups = planar_groups(paths[0])
    reference = groups[0].roi.ContentSequence[0].ReferencedSOPSequence[0]
    file_index, _ = single.frame_sources[1]
    expected = pydicom.dcmread(single.source_files[file_index], stop_before_pixels=True).SOPInstanceUID
    assert reference.ReferencedSOPInstanceUID == expected
    assert "ReferencedFrameNumber" not in reference  # a single-frame image has no frames to number


def test_secondary_capture_burns_in_the_key_frame(series, tmp_path):
    run, _ = series
    finding = trajectory_finding(6, first=2, key=4)
    sources = SourceImages.read(run.source_files, run.frame_sources)
    sc_path = write_dicom_results(tmp_path, "S-sc", build_dicom_results(finding, sources, run.frames, ALGORITHM))[1]
    sc = pydicom.dcmread(sc_path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB" and (sc.Rows, sc.Columns) == run.frames.shape[1:]
    pixels = sc.pixel_array.astype(int)
    grey = run.frames[4].astype(int)
    drawn = np.abs(pixels - grey[..., None]).max(axis=2) > 0
    assert drawn.any(), "nothing burned in"
    # The box outline (left edge at x = 8) is drawn; far from box and caption the frame is unchanged.
    assert drawn[10:20, 8].all()
    assert not drawn[30:, 30:].any()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
                    "InstitutionName", "OperatorsName"):
        assert str(sc[keyword].value) == identity(0)[keyword], keyword


def test_presentation_state_draws_every_trajectory_box_on_its_frame(series, tmp_path):
    run, _ = series
    finding = trajectory_finding(6, first=3, key=5)
    sources = SourceImages.read(run.source_files, run.frame_sources)
    paths = write_dicom_results(tmp_path, "S-pr", build_dicom_results(finding, sources, run.frames, ALGORITHM, gsps=True))
    assert [p.name for p in paths] == result_names("S-pr", gsps=True)
    pr = pydicom.dcmread(paths[2])
    assert pr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
    annotations = pr.GraphicAnnotationSequence
    frames = [int(a.ReferencedImageSequence[0].ReferencedFrameNumber) for a in annotations]
    assert frames == [4, 5, 6]
    for annotation, t in zip(annotations, (3, 4, 5)):
        x0, y0, x1, y1 = finding.boxes_xyxy[t]
        assert [float(v) for v in annotation.GraphicObjectSequence[0].GraphicData] == pytest.approx(
            [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0])


def test_dciodvfy_finds_no_errors(series, tmp_path):
    """Remaining warnings, all explained: the private coding scheme 99PERFD2 (perforation concepts
    have no standard code), Laterality present but empty (unknown for the run), and none other."""
    run, single = series
    explained = ("Unrecognized defined term <99PERFD2>", "attribute <Laterality>")
    for dicom_series, finding in ((run, trajectory_finding(6, 2, 4)), (single, trajectory_finding(3, 0, 1))):
        sources = SourceImages.read(dicom_series.source_files, dicom_series.frame_sources)
        results = build_dicom_results(finding, sources, dicom_series.frames, ALGORITHM, gsps=True)
        for path in write_dicom_results(tmp_path, f"S-{len(dicom_series.frames)}", results):
            report = run_tool("dciodvfy", str(path))
            lines = [line for line in (report.stdout + report.stderr).splitlines() if line.strip()]
            assert not [line for line in lines if line.startswith("Error")], (path.name, lines)
            unexplained = [line for line in lines if line.startswith("Warning") and not any(e in line for e in explained)]
            assert not unexplained, (path.name, unexplained)


def test_finding_of_a_predicted_series_uses_the_trajectory_maximum_as_key_frame():
    result = SeriesResult(raw=[], optimized=[], boxes_xyxy=[None, [1, 2, 3, 4], [2, 2, 4, 4]],
                          scores=[None, 0.6, 0.6], score=0.6, frame_of_max=2)
    finding = SeriesFinding.of(result, Threshold(0.7, "spec95", "test", series_optimization=False))
    assert (finding.key_frame, finding.present, finding.trajectory) == (2, False, [1, 2])
    assert (finding.threshold, finding.operating_point, finding.series_optimization) == (0.7, "spec95", False)
    empty = SeriesResult(raw=[], optimized=[], boxes_xyxy=[None] * 5, scores=[None] * 5, score=0.0, frame_of_max=None)
    assert SeriesFinding.of(empty, Threshold(0.1, "youden", "test")).key_frame == 2  # the middle frame
