"""No patient data out of ``prepare-dicom`` (issue 6.4).

DICOM files with known identifying values (name, IDs, birth date, accession number, institution,
referring physician, dates, study/series/instance UIDs) are imported, on success and on failure
paths; every byte of every output file, every output file name, stdout, stderr, the log records
and the warnings are then scanned for those values, in any case and in common date spellings.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pydicom
import pytest
from helpers.dicom_factory import (
    CT_SOP_CLASS,
    assert_no_identity_leak,
    make_identity,
    ramp_frames,
    write_single_frame_series,
    write_xa,
)
from pydicom import config as pydicom_config
from pydicom.uid import RLELossless

from perforation_d2 import cli
from perforation_d2.data.dicom import read_dicom_series

IDENTITIES = [make_identity(0, patient=0), make_identity(1, patient=0), make_identity(2, patient=1),
              make_identity(3, patient=2), make_identity(4, patient=3), make_identity(5, patient=4)]
IDENTITY_VALUES = sorted({value for identity in IDENTITIES for value in identity.values()})


def write_identified_input(root: Path, monkeypatch) -> tuple[dict[str, Path], list[str]]:
    """Every kind of file the import meets, each carrying identifying values; also returns the
    identifying values beyond ``IDENTITY_VALUES`` that went into the files."""
    with monkeypatch.context() as patch:
        # Let the factory write invalid values silently; reading keeps pydicom's default (warn).
        patch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)
        patch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)
        files = {
            "run": write_xa(root / "run1.dcm", ramp_frames(4, 24), identity=IDENTITIES[0], frame_time=50.0,
                            acquisition_time="134159"),
            "rle": write_xa(root / "deep" / "run2.dcm", ramp_frames(3, 24, 0, 4095, "uint16"), bits_stored=12,
                            identity=IDENTITIES[1], transfer_syntax=RLELossless),
            "ct": write_xa(root / "ct.dcm", ramp_frames(2, 24), modality="CT", sop_class=CT_SOP_CLASS,
                           identity=IDENTITIES[3]),
            # A free-text Modality holding the patient's name: the skip reason must not echo it.
            "odd_modality": write_xa(root / "odd.dcm", ramp_frames(2, 24),
                                     modality=IDENTITIES[4]["PatientName"][:16], identity=IDENTITIES[4]),
        }
        write_single_frame_series(root / "series", ramp_frames(3, 24), identity=IDENTITIES[2])
        # An invalid UID (letters) makes pydicom warn while reading, quoting the value.
        invalid = dict(IDENTITIES[5], SeriesInstanceUID=IDENTITIES[5]["SeriesInstanceUID"] + "x.PID")
        files["invalid_uid"] = write_xa(root / "invalid.dcm", ramp_frames(2, 24), identity=invalid)
    assert pydicom_config.settings.reading_validation_mode != pydicom_config.IGNORE
    return files, [invalid["SeriesInstanceUID"]]


@pytest.fixture
def captured_everything(caplog, capsys):
    """Capture log records at every level and every warning, for the scan."""
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def run(*args) -> int:
    return cli.main(["prepare-dicom", *map(str, args)])


def test_prepare_dicom_leaks_no_identity(tmp_path, monkeypatch, caplog, capsys, captured_everything, salt_file):
    files, more_values = write_identified_input(tmp_path / "in", monkeypatch)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({
        "run1.dcm": [{"frame": 1, "bbox": [2, 2, 6, 6]}],
        IDENTITIES[2]["SeriesInstanceUID"]: [{"frame": 2, "bbox": [1, 1, 4, 4]}],
    }))
    out = tmp_path / "out"
    assert run("--input", tmp_path / "in", "--out", out, "--boxes", boxes) == 0
    success = capsys.readouterr()
    cohort = json.loads((out / "cohort.json").read_text())
    assert len(cohort["videos"]) == 4 and len(cohort["annotations"]) == 2
    assert len({v["patient_id"] for v in cohort["videos"]}) == 3  # run1 and run2 share patient 0
    assert "ct.dcm: skipped" in success.err and "odd.dcm: skipped" in success.err

    # Failure paths: a damaged file, a boxes key naming an unknown UID, an existing output.
    damaged = tmp_path / "damaged"
    broken = write_xa(damaged / "broken.dcm", ramp_frames(2, 24), identity=IDENTITIES[0])
    broken.write_bytes(broken.read_bytes()[:600])
    bad_boxes = tmp_path / "bad_boxes.json"
    bad_boxes.write_text(json.dumps({IDENTITIES[3]["SeriesInstanceUID"]: [], IDENTITIES[2]["StudyInstanceUID"]: []}))
    assert run("--input", damaged, "--out", tmp_path / "out2") == 2
    assert run("--input", tmp_path / "in", "--out", tmp_path / "out3", "--boxes", bad_boxes) == 2
    assert run("--input", files["run"], "--out", out) == 2
    failures = capsys.readouterr()
    assert failures.err.count("error:") == 3

    # The reading API's objects too (a later command may print or log them).
    series_text = [repr(s) for s in read_dicom_series(tmp_path / "in", salt="k")]

    scanned = assert_no_identity_leak(
        [out, success.out, success.err, failures.out, failures.err, caplog.text, *series_text,
         *(str(w.message) for w in captured_everything)],
        [*IDENTITY_VALUES, *more_values, salt_file.read_text().strip()],  # the salt is a secret too
    )
    assert scanned > sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    # The hazard was real: plain pydicom quotes the invalid UID in a warning.
    with pytest.warns(UserWarning, match="x.PID"):
        pydicom.dcmread(files["invalid_uid"]).SeriesInstanceUID  # noqa: B018
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_boxes.json", "boxes.json", "damaged", "in", "out"]


def test_identity_scan_catches_leaks_in_any_spelling(tmp_path):
    identity = make_identity(0)
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    (leaky / "ok.json").write_text('{"patient_id": "P-0123456789abcdef"}')
    assert assert_no_identity_leak([leaky, "all clean"], identity.values()) > 0
    for text in (
        identity["PatientName"].upper(),
        "born 10.07.1958",  # PatientBirthDate 19580710, day-first
        "study of 2019-08-23",
        "acquired at 13:41:59",
        identity["SeriesInstanceUID"],
    ):
        with pytest.raises(AssertionError, match="identifying values leaked"):
            assert_no_identity_leak([text], identity.values())
    (leaky / "Quibblewick0.png").write_bytes(b"\x89PNG")  # a file *name* leaks as well
    with pytest.raises(AssertionError, match="name of"):
        assert_no_identity_leak([leaky], identity.values())
