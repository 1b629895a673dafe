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
import os

import pydicom
import pytest
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


def test_a_file_name_that_is_not_utf8_is_hashed_by_its_own_bytes():
    from perforation_d2.data.dicom.pseudonyms import digest

    raw = b"folder/\xff\xfe-scan.dcm"  # not UTF-8: os.fsdecode gives lone surrogates
    expected = hmac.new("k\u00e9y".encode(), raw, hashlib.sha256).hexdigest()[:16]
    assert digest("k\u00e9y", os.fsdecode(raw)) == expected
    assert digest("k\u00e9y", "plain.dcm") == hmac.new("k\u00e9y".encode(), b"plain.dcm", hashlib.sha256).hexdigest()[:16]


def test_a_salt_that_is_not_utf8_is_used_by_its_own_bytes():
    from perforation_d2.data.dicom.pseudonyms import digest

    salt = "s" + os.fsdecode(b"\xff")  # e.g. read from a non-UTF-8 environment variable
    assert digest(salt, "x") == hmac.new(b"s\xff", b"x", hashlib.sha256).hexdigest()[:16]


def test_the_user_salt_file_is_created_once_private_and_random(tmp_path, monkeypatch, capsys):
    from perforation_d2.data.dicom.pseudonyms import SALT_ENV, SALT_FILE_ENV, resolve_salt

    monkeypatch.delenv(SALT_ENV, raising=False)
    path = tmp_path / "nested" / "config" / "salt"
    monkeypatch.setenv(SALT_FILE_ENV, str(path))
    old_mask = os.umask(0o022)
    try:
        salt = resolve_salt(None)
    finally:
        os.umask(old_mask)
    assert "created a new pseudonymisation salt" in capsys.readouterr().err
    assert path.read_text() == salt + "\n" and len(salt) == 64 and int(salt, 16) >= 0
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["salt"]  # no temporary file left
    assert resolve_salt(None) == salt and capsys.readouterr().err == ""  # reused, not recreated


def test_unusable_salts_are_clear_errors(tmp_path, monkeypatch):
    from perforation_d2.data.dicom.pseudonyms import SALT_ENV, SALT_FILE_ENV, UidCheck, resolve_salt
    from perforation_d2.errors import DSAInputError

    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.setenv(SALT_FILE_ENV, str(tmp_path))  # a folder, not a file
    with pytest.raises(DSAInputError, match=r"cannot read or create the pseudonymisation salt file \(Is a directory\)"):
        resolve_salt(None)
    (tmp_path / "latin1").write_bytes(b"caf\xe9 secret\n")  # not UTF-8: no strerror, named by its type
    monkeypatch.setenv(SALT_FILE_ENV, str(tmp_path / "latin1"))
    with pytest.raises(DSAInputError, match=r"salt file \(UnicodeDecodeError\)"):
        resolve_salt(None)
    (tmp_path / "empty").write_text("  \n")
    monkeypatch.setenv(SALT_FILE_ENV, str(tmp_path / "empty"))
    with pytest.raises(DSAInputError, match="salt file is empty"):
        resolve_salt(None)
    with pytest.raises(DSAInputError, match="salt .* is empty"):
        resolve_salt("   ")
    assert not UidCheck.of("k", None).matches("1.2.3")
    assert UidCheck.of("k", "1.2.3").matches("1.2.3") and not UidCheck.of("k", "1.2.3").matches("1.2.4")
