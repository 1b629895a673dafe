"""The series key (the video name of an imported series) is the salted HMAC, never a plain hash.

Expected keys are computed here with ``hmac`` from the UIDs read back from the files: ``"S-"`` +
the first 16 hex digits of HMAC-SHA256(salt, "instance:" + SOPInstanceUID) for a multi-frame
file, (salt, "series:" + SeriesInstanceUID) for a series of single-frame files. Another salt gives
other keys; without the salt (or with a plain SHA-256) they would be recomputable from the UIDs.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pydicom
from helpers.dicom_factory import make_identity, ramp_frames, write_single_frame_series, write_xa

from perforation_d2.cli import main


def _hmac(salt: str, text: str) -> str:
    return hmac.new(salt.encode(), text.encode(), hashlib.sha256).hexdigest()[:16]


def _import(source, out, salt, capsys) -> list[str]:
    assert main(["prepare-dicom", "--input", str(source), "--out", str(out), "--salt", salt]) == 0
    capsys.readouterr()
    return sorted(video["name"] for video in json.loads((out / "cohort.json").read_text())["videos"])


def test_series_keys_are_the_salted_hmac_of_the_uids(tmp_path, capsys):
    source = tmp_path / "in"
    multi = write_xa(source / "run.dcm", ramp_frames(3, 32), identity=make_identity(0))
    singles = write_single_frame_series(source / "series", ramp_frames(2, 32), identity=make_identity(1, patient=1))
    sop_uid = str(pydicom.dcmread(multi, stop_before_pixels=True).SOPInstanceUID)
    series_uid = str(pydicom.dcmread(singles[0], stop_before_pixels=True).SeriesInstanceUID)

    keys = {}
    for salt in ("first secret", "second secret"):
        expected = sorted(["S-" + _hmac(salt, "instance:" + sop_uid), "S-" + _hmac(salt, "series:" + series_uid)])
        keys[salt] = _import(source, tmp_path / f"out-{len(keys)}", salt, capsys)
        assert keys[salt] == expected
    assert not set(keys["first secret"]) & set(keys["second secret"])
    unsalted = {"S-" + hashlib.sha256(("instance:" + sop_uid).encode()).hexdigest()[:16],
                "S-" + _hmac("", "instance:" + sop_uid)}
    assert not unsalted & set(keys["first secret"])
    # The same salt gives the same keys (imports link across runs).
    assert _import(source, tmp_path / "again", "first secret", capsys) == keys["first secret"]
