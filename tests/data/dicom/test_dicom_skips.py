"""One odd file never stops a folder (issue 10.5, 10.6): every usable series is imported and every
skipped file listed with its reason, printed and (pseudonymised) in ``cohort.json``; ``--strict``
turns any skip into a failure before anything is written.

The odd files are those of pydicom's test corpus that stopped whole runs (32-bit integer pixels as
in ``rtdose.dcm``, 1-bit pixels as in ``liver_1frame.dcm``), written here with pydicom, plus a
damaged header, truncated pixel data, duplicates, a non-DICOM file and file names that are not
valid UTF-8.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.dicom_factory import (
    IDENTITY_KEYWORDS,
    assert_no_identity_leak,
    make_identity,
    ramp_frames,
    write_xa,
)

from perforation_d2 import cli
from perforation_d2.data.cohort import cohort_problems
from perforation_d2.data.dicom import scan_dicom_input


def prepare(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["prepare-dicom", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def write_odd_folder(root: Path) -> tuple[list[str], list[str]]:
    """Two good series and six odd files; returns (odd file names, identifying values written)."""
    identities = [make_identity(k) for k in range(8)]
    write_xa(root / "good1.dcm", ramp_frames(3, 16), identity=identities[0])
    write_xa(root / "patient dir" / "good2.dcm", ramp_frames(2, 16), identity=identities[1])
    int32 = np.arange(2 * 16 * 16, dtype="<i4").reshape(2, 16, 16) * 1000
    write_xa(root / "rtdose_like.dcm", ramp_frames(2, 16), identity=identities[2],
             extra={"BitsAllocated": 32, "BitsStored": 32, "HighBit": 31, "PixelData": int32.tobytes()})
    bits = np.packbits(np.arange(16 * 16) % 3 == 0).tobytes()
    write_xa(root / "liver_like.dcm", ramp_frames(1, 16)[0], identity=identities[3], number_of_frames=None,
             extra={"BitsAllocated": 1, "BitsStored": 1, "HighBit": 0, "PixelData": bits})
    damaged = write_xa(root / "damaged.dcm", ramp_frames(2, 16), identity=identities[4])
    data = bytearray(damaged.read_bytes())
    data[140:400] = np.random.default_rng(1).integers(0, 256, 260, dtype=np.uint8).tobytes()
    damaged.write_bytes(bytes(data))
    truncated = write_xa(root / "truncated.dcm", ramp_frames(4, 32, 0, 4095, "uint16"), bits_stored=12,
                         identity=identities[5])
    truncated.write_bytes(truncated.read_bytes()[:-3000])  # found only when the pixels are read
    write_xa(root / "zz_copy_of_good1.dcm", ramp_frames(3, 16), identity=identities[0])  # the same SOP instance
    (root / "notes.txt").write_text("not dicom")
    odd = ["rtdose_like.dcm", "liver_like.dcm", "damaged.dcm", "truncated.dcm", "zz_copy_of_good1.dcm", "notes.txt"]
    values = [identity[k] for identity in identities for k in IDENTITY_KEYWORDS if k in identity]
    return odd, values


def test_a_folder_imports_every_usable_series_and_lists_every_skip(tmp_path, capsys, salt_file):
    odd, identity_values = write_odd_folder(tmp_path / "in")
    out = tmp_path / "out"
    rc, stdout, stderr = prepare(capsys, "--input", tmp_path / "in", "--out", out)
    assert rc == 0, stderr
    assert "wrote 2 series (5 frames, 2 patients)" in stdout and "skipped 6 file(s)" in stdout
    for name in odd:
        assert f"{name}: skipped, " in stderr, name
    assert "BitsAllocated must be 8 or 16" in stderr and "truncated" in stderr and "same image instance" in stderr
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort_problems(cohort, out / "cohort.json") == []
    assert sorted(v["num_frames"] for v in cohort["videos"]) == [2, 3]
    records = cohort["info"]["skipped"]
    assert cohort["info"]["skipped_files"] == len(records) == 6
    # input_index: the position in the listing, each folder's files in name order before its sub-folders'.
    listing = [f"{folder}/{name}" for folder, subfolders, names in os.walk(tmp_path / "in")
               if not subfolders.sort() for name in sorted(names)]
    assert sorted(listing[r["input_index"]].split("/")[-1] for r in records) == sorted(odd)
    assert all(re.fullmatch(r"F-[0-9a-f]{16}", r["file"]) for r in records)
    assert len({r["file"] for r in records}) == 6
    # No path, file name or header value in the records: the duplicate names its original by pseudonym.
    text = json.dumps(records)
    assert not any(name in text for name in [*odd, "good1.dcm", "patient dir"])
    assert any(re.search(r"same image instance as F-[0-9a-f]{16}", r["reason"]) for r in records)
    assert_no_identity_leak([out, stdout, stderr], [*identity_values, salt_file.read_text().strip()])


def test_strict_fails_on_any_skip_and_writes_nothing(tmp_path, capsys):
    odd, _ = write_odd_folder(tmp_path / "in")
    out = tmp_path / "out"
    rc, _, stderr = prepare(capsys, "--input", tmp_path / "in", "--out", out, "--strict")
    assert rc == 2 and "Traceback" not in stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "--strict" in error and "Nothing was written" in error
    for name in odd[:3] + odd[4:]:  # the truncated pixels are found after the header pass
        assert name in error, name
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["in"]
    # The pixel-pass failure stops --strict too, once the header-pass skips are gone.
    for name in odd:
        if name != "truncated.dcm":
            (tmp_path / "in" / name).unlink()
    rc, _, stderr = prepare(capsys, "--input", tmp_path / "in", "--out", out, "--strict")
    assert rc == 2 and "truncated.dcm" in stderr and not out.exists()


def test_the_scan_exposes_the_skips_for_other_commands(tmp_path):
    odd, _ = write_odd_folder(tmp_path / "in")
    scan = scan_dicom_input(tmp_path / "in", salt="k")
    assert sorted(s.path.name for s in scan.skips) == sorted(set(odd) - {"truncated.dcm"})
    assert scan.strict_problems().startswith(f"{tmp_path / 'in'}: 5 skipped files: ")
    series = [scan.read_or_skip(plan) for plan in scan.plans]
    assert sum(s is None for s in series) == 1 and "truncated.dcm" in scan.skipped[-1]
    single = scan_dicom_input(tmp_path / "in" / "good1.dcm", salt="k")
    assert single.skips == [] and single.strict_problems() is None


def test_a_single_odd_file_given_directly_is_an_error(tmp_path, capsys):
    write_odd_folder(tmp_path / "in")
    rc, _, stderr = prepare(capsys, "--input", tmp_path / "in" / "rtdose_like.dcm", "--out", tmp_path / "out")
    assert rc == 2 and "BitsAllocated must be 8 or 16" in stderr and not (tmp_path / "out").exists()


def test_file_names_that_are_not_utf8_are_reported_and_imported(tmp_path, capsys):
    folder = os.fsencode(tmp_path / "in")
    os.makedirs(folder)
    good = write_xa(tmp_path / "in" / "tmp.dcm", ramp_frames(2, 16))
    os.rename(good, folder + b"/run\xff.dcm")
    with open(folder + b"/notes\xfe.txt", "wb") as handle:
        handle.write(b"not dicom")
    out = tmp_path / "out"
    rc, stdout, stderr = prepare(capsys, "--input", tmp_path / "in", "--out", out)
    assert rc == 0, stderr
    assert "notes\\xfe.txt: skipped, is not a DICOM file" in stderr
    cohort = json.loads((out / "cohort.json").read_text(encoding="utf-8"))
    assert len(cohort["videos"]) == 1 and cohort["info"]["skipped_files"] == 1


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "1e400", "lots"])
def test_max_decoded_mib_must_be_a_finite_positive_number(tmp_path, capsys, value):
    write_xa(tmp_path / "run.dcm", ramp_frames(2, 16))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare-dicom", "--input", str(tmp_path / "run.dcm"), "--out", str(tmp_path / "out"),
                  "--max-decoded-mib", value])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--max-decoded-mib" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_deeply_nested_boxes_file_is_a_clean_error(tmp_path, capsys):
    write_xa(tmp_path / "in" / "run.dcm", ramp_frames(2, 16))
    boxes = tmp_path / "boxes.json"
    boxes.write_text('{"run.dcm": ' + "[" * 200_000 + "]" * 200_000 + "}")
    rc, _, stderr = prepare(capsys, "--input", tmp_path / "in", "--out", tmp_path / "out", "--boxes", boxes)
    assert rc == 2 and str(boxes) in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
