"""``predict --dicom-out``: an SR and a Secondary Capture per DICOM series, in predict's manifest.

The SR read back with highdicom gives the box, key frame and score of ``series_scores.json``;
the DICOM files carry the source's identity and predict's other outputs none of it.
"""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from helpers.cohorts import make_toy_cohort
from helpers.dicom_factory import (
    assert_no_identity_leak,
    make_identity,
    ramp_frames,
    write_single_frame_series,
    write_xa,
)
from helpers.quick_model import write_quick_model

from perforation_d2.cli import main

SALT = "dicom-out-salt"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_quick_model(tmp_path_factory.mktemp("model"))


def predict(model, input_path, out, *extra: str) -> int:
    config, weights = model
    return main(["predict", "--config-file", str(config), "--weights", str(weights), "--device", "cpu",
                 "--input", str(input_path), "--out", str(out), "--salt", SALT, *extra])


def test_dicom_out_writes_sr_and_capture_per_series_into_the_manifest(model, tmp_path, capsys):
    ids = [{**make_identity(i), "OperatorsName": f"Thistlewood{i}^Operator"} for i in range(2)]
    dicom = tmp_path / "dicom"
    multi = write_xa(dicom / "run.dcm", ramp_frames(5, 48), identity=ids[0], frame_time=100.0)
    singles = write_single_frame_series(dicom / "single", ramp_frames(3, 40), identity=ids[1])
    out = tmp_path / "out"
    assert predict(model, dicom, out, "--dicom-out", "--gsps") == 0
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    series = json.loads((out / "series_scores.json").read_text())
    dicom_files = sorted(name for name in manifest if name.startswith("dicom/"))
    assert len(dicom_files) == 3 * len(series)
    for entry in series.values():
        stem = "dicom/" + entry["gif"].split("/", 1)[1].removesuffix(".gif")
        assert {stem + suffix for suffix in ("_SR.dcm", "_SC.dcm", "_PR.dcm")} <= set(dicom_files)
        sr = hd.sr.srread(out / (stem + "_SR.dcm"))
        key = sr.content.get_planar_roi_measurement_groups()[0]
        x, y, w, h = entry["box"]
        np.testing.assert_allclose(key.roi.value, [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], atol=1e-4)
        reference = key.roi.ContentSequence[0].ReferencedSOPSequence[0]
        if entry["num_frames"] == 5:
            assert reference.ReferencedSOPInstanceUID == pydicom.dcmread(multi).SOPInstanceUID
            assert int(reference.ReferencedFrameNumber) == entry["frame_of_max"] + 1
        else:
            assert reference.ReferencedSOPInstanceUID == pydicom.dcmread(singles[entry["frame_of_max"]]).SOPInstanceUID
        score = {m.name.meaning: m.value for m in key.get_measurements()}["Perforation detection score"]
        assert score == pytest.approx(entry["score"], abs=1e-9)
        assert pydicom.dcmread(out / (stem + "_SC.dcm")).BurnedInAnnotation == "YES"
    # Identity: in the DICOM results, nowhere else.
    for name in dicom_files:
        ds = pydicom.dcmread(out / name)
        assert ds.PatientID in {i["PatientID"] for i in ids} and ds.PatientName
    captured = capsys.readouterr()
    others = [out / name for name in manifest if not name.startswith("dicom/")] + [out / "manifest.json"]
    values = [v for i in ids for k, v in i.items() if k not in ("StudyDate", "SeriesDate", "AcquisitionDateTime")]
    assert assert_no_identity_leak([*others, captured.out, captured.err], values) > 1000


def test_dicom_out_on_a_cohort_adds_nothing(model, tmp_path):
    json_file = make_toy_cohort(tmp_path / "cohort", num_patients=2, frames=[3, 2], size=48)
    assert predict(model, json_file, tmp_path / "out", "--dicom-out") == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    assert not [name for name in manifest if name.startswith("dicom/")]
    assert not (tmp_path / "out" / "dicom").exists()
