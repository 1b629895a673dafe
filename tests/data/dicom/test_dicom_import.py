"""DICOM import: the reading API (pixel pipeline, frame times, grouping) and ``prepare-dicom``.

Files are written with pydicom by ``dicom_factory``; the three real XA files of
``../shared/fixtures/real_xa`` must import too. Expected pixels are computed here from the DICOM
definitions, independently of the implementation.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers.dicom_factory import (
    CT_SOP_CLASS,
    XRF_SOP_CLASS,
    make_identity,
    ramp_frames,
    write_single_frame_series,
    write_xa,
)
from PIL import Image
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from perforation_d2 import cli
from perforation_d2.data.cohort import cohort_problems
from perforation_d2.data.cohort_writer import CohortWriter
from perforation_d2.data.dicom import read_dicom_series
from perforation_d2.errors import DSAInputError
from perforation_d2.io.ownership import MARKER_FILE
from perforation_d2.io.transaction import folder_lock

REAL_XA = Path(__file__).resolve().parents[3].parent / "shared" / "fixtures" / "real_xa"
# Skipped only outside CI: CI keeps ../shared beside the clone, so there a missing folder fails.
needs_real_xa = pytest.mark.skipif(
    not REAL_XA.is_dir() and not os.environ.get("CI"), reason=f"real XA fixtures not found at {REAL_XA}"
)


def prepare(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["prepare-dicom", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def nearest_rank_u8(values: np.ndarray, all_values: np.ndarray | None = None) -> np.ndarray:
    """The documented robust window: nearest-rank 0.5th..99.5th percentile mapped to 0..255."""
    population = np.sort((values if all_values is None else all_values).reshape(-1).astype(np.float64))
    n = population.size
    low = population[math.ceil(0.005 * n) - 1]
    high = population[math.ceil(0.995 * n) - 1]
    return np.round(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def linear_window_u8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window to 0..255."""
    return np.round(np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255).astype(np.uint8)


def permuted_levels(bits: int, shape=(4, 16, 16), signed: bool = False, seed: int = 0) -> np.ndarray:
    """Every pixel a different level spread over the whole BitsStored range, in random order."""
    n = int(np.prod(shape))
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    levels = np.round(np.linspace(low, high, n)).astype(np.int64)
    dtype = ("int" if signed else "uint") + ("8" if bits <= 8 else "16")
    return np.random.default_rng(seed).permutation(levels).reshape(shape).astype(dtype)


# ---- reading API: pixel pipeline ---------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 12, 16])
def test_bit_depths_use_the_series_percentile_window(tmp_path, bits):
    stored = permuted_levels(bits)
    write_xa(tmp_path / "run.dcm", stored, bits_stored=bits)
    (series,) = read_dicom_series(tmp_path / "run.dcm", salt="s")
    assert series.frames.dtype == np.uint8 and series.frames.shape == stored.shape
    np.testing.assert_array_equal(series.frames, nearest_rank_u8(stored.astype(np.float64)))
    assert series.windowing.startswith("percentile")


def test_signed_data_rescale_and_window_centre_width(tmp_path):
    stored = permuted_levels(16, signed=True)
    write_xa(tmp_path / "run.dcm", stored, rescale=(0.5, 100.0), window=(100.0, 4000.0))
    (series,) = read_dicom_series(tmp_path / "run.dcm", salt="s")
    expected = linear_window_u8(stored * 0.5 + 100.0, 100.0, 4000.0)
    np.testing.assert_array_equal(series.frames, expected)
    assert series.frames.min() == 0 and series.frames.max() == 255  # the window really clips
    assert "window" in series.windowing


def test_twelve_bit_signed_values_are_sign_extended(tmp_path):
    stored = permuted_levels(12, signed=True)
    write_xa(tmp_path / "run.dcm", stored, bits_stored=12, window=(0.0, 4096.0))
    (series,) = read_dicom_series(tmp_path / "run.dcm", salt="s")
    np.testing.assert_array_equal(series.frames, linear_window_u8(stored.astype(np.float64), 0.0, 4096.0))


def test_linear_exact_window_function(tmp_path):
    stored = permuted_levels(12)
    write_xa(tmp_path / "run.dcm", stored, bits_stored=12, window=(1000.0, 1500.0),
             extra={"VOILUTFunction": "LINEAR_EXACT"})
    (series,) = read_dicom_series(tmp_path / "run.dcm", salt="s")
    expected = np.round(np.clip((stored - 1000.0) / 1500.0 + 0.5, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(series.frames, expected)


def test_monochrome1_is_inverted_after_windowing(tmp_path):
    stored = permuted_levels(12)
    write_xa(tmp_path / "m2.dcm", stored, bits_stored=12, window=(2000.0, 3000.0))
    write_xa(tmp_path / "m1.dcm", stored, bits_stored=12, window=(2000.0, 3000.0), photometric="MONOCHROME1",
             identity=make_identity(1))
    (m2,) = read_dicom_series(tmp_path / "m2.dcm", salt="s")
    (m1,) = read_dicom_series(tmp_path / "m1.dcm", salt="s")
    np.testing.assert_array_equal(m1.frames.astype(int), 255 - m2.frames.astype(int))
    np.testing.assert_array_equal(m2.frames, linear_window_u8(stored.astype(np.float64), 2000.0, 3000.0))


def test_modality_lut_sequence_then_percentile_window(tmp_path):
    stored = permuted_levels(8)
    lut = (np.arange(256) ** 2 // 16).astype(np.uint16)  # a non-linear LUT: 0..4064
    write_xa(tmp_path / "run.dcm", stored, modality_lut=(lut, 0))
    (series,) = read_dicom_series(tmp_path / "run.dcm", salt="s")
    np.testing.assert_array_equal(series.frames, nearest_rank_u8(lut[stored].astype(np.float64)))


def test_voi_lut_sequence_wins_over_window(tmp_path):
    stored = permuted_levels(8)
    voi = np.clip(np.arange(256) * 3 - 100, 0, 511).astype(np.uint16)
    write_xa(tmp_path / "run.dcm", stored, voi_lut=(voi, 0, 16), window=(10.0, 20.0))
    (series,) = read_dicom_series(tmp_path / "run.dcm", salt="s")
    expected = np.round((voi[stored] - voi.min()) / (voi.max() - voi.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(series.frames, expected)
    assert series.windowing.startswith("VOI LUT")


def test_float_pixel_data_imports_and_nan_is_rejected(tmp_path):
    values = ramp_frames(3, 16).astype(np.float32) / 7.0
    write_xa(tmp_path / "ok.dcm", values)
    (series,) = read_dicom_series(tmp_path / "ok.dcm", salt="s")
    np.testing.assert_array_equal(series.frames, nearest_rank_u8(values.astype(np.float64)))
    for bad in (np.nan, np.inf):
        values_bad = values.copy()
        values_bad[1, 3, 4] = bad
        write_xa(tmp_path / "bad.dcm", values_bad)
        with pytest.raises(DSAInputError, match="NaN or infinite") as err:
            read_dicom_series(tmp_path / "bad.dcm", salt="s")
        assert str(tmp_path / "bad.dcm") in str(err.value)


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"frame_time": 40.0, "frame_time_vector": [0, 90, 90], "cine_rate": 5.0}, 40.0),
        ({"frame_time_vector": [0, 40, 60, 50]}, 50.0),  # mean of the increments after the first entry
        ({"frame_time": 0.0, "cine_rate": 25.0}, 40.0),  # a zero FrameTime is ignored
        ({"display_frame_rate": 8.0}, 125.0),
        ({}, None),
    ],
)
def test_frame_time_sources(tmp_path, attributes, expected):
    write_xa(tmp_path / "run.dcm", ramp_frames(4, 16), **attributes)
    (series,) = read_dicom_series(tmp_path / "run.dcm", salt="s")
    assert series.frame_time_ms == (pytest.approx(expected) if expected is not None else None)


# ---- reading API: grouping and ordering --------------------------------------------------------
def test_single_frame_series_sorted_by_instance_number_then_time(tmp_path):
    frames = np.stack([np.full((16, 16), 40 * k, np.uint8) for k in range(5)])
    write_single_frame_series(tmp_path / "by_number", frames, order=[3, 0, 4, 1, 2], window=(128, 256))
    # No InstanceNumber: AcquisitionTime orders (file names deliberately in reverse order).
    identity = make_identity(1)
    for k in range(3):
        write_xa(tmp_path / "by_time" / f"Z{9 - k}.dcm", frames[k], identity=identity, instance_number=None,
                 number_of_frames=None, acquisition_time=f"1030{k:02d}.5", window=(128, 256),
                 sop_uid=f"{identity['SeriesInstanceUID']}.{k + 1}")
    by_number, by_time = sorted(read_dicom_series(tmp_path, salt="s"), key=lambda s: len(s.frames), reverse=True)
    expected = linear_window_u8(np.arange(5, dtype=np.float64) * 40, 128, 256)
    np.testing.assert_array_equal(by_number.frames[:, 0, 0], expected)
    np.testing.assert_array_equal(by_time.frames[:, 0, 0], expected[:3])
    assert [p.name for p in by_time.source_files] == ["Z9.dcm", "Z8.dcm", "Z7.dcm"]
    assert by_number.frame_sources == [(k, 0) for k in range(5)]


def test_folder_with_multi_frame_xrf_single_frames_and_skipped_ct(tmp_path):
    write_xa(tmp_path / "a" / "run.dcm", ramp_frames(4, 16), frame_time=50.0)
    write_xa(tmp_path / "a" / "fluoro.dcm", ramp_frames(2, 16), modality="RF", sop_class=XRF_SOP_CLASS,
             identity=make_identity(1))
    write_single_frame_series(tmp_path / "b", ramp_frames(3, 16), identity=make_identity(2))
    write_xa(tmp_path / "ct.dcm", ramp_frames(1, 16)[0], modality="CT", sop_class=CT_SOP_CLASS,
             identity=make_identity(3))
    (tmp_path / "notes.txt").write_text("not dicom")
    series = read_dicom_series(tmp_path, salt="s")
    assert sorted(len(s.frames) for s in series) == [2, 3, 4]
    skipped = series[0].skipped
    assert len(skipped) == 2
    assert any("ct.dcm" in r and "CT Image Storage" in r for r in skipped)
    assert any("notes.txt" in r and "not a DICOM file" in r for r in skipped)
    assert len({s.series_key for s in series}) == 3
    assert all(s.series_key.startswith("S-") and s.pseudo_patient_id.startswith("P-") for s in series)


def test_pseudonyms_depend_only_on_salt_and_identity(tmp_path):
    write_xa(tmp_path / "one" / "a.dcm", ramp_frames(2, 16), identity=make_identity(0, patient=7))
    write_xa(tmp_path / "two" / "b.dcm", ramp_frames(2, 16), identity=make_identity(1, patient=7))
    (a,) = read_dicom_series(tmp_path / "one", salt="secret")
    (b,) = read_dicom_series(tmp_path / "two", salt="secret")
    (c,) = read_dicom_series(tmp_path / "two", salt="other")
    assert a.pseudo_patient_id == b.pseudo_patient_id != c.pseudo_patient_id
    assert a.series_key != b.series_key
    assert b.has_series_uid(make_identity(1, patient=7)["SeriesInstanceUID"]) and not a.has_series_uid("1.2.3")


# ---- real fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_series():
    return {s.source_files[0].name: s for s in read_dicom_series(REAL_XA, salt="fixture-salt")}


@needs_real_xa
def test_real_xa_fixtures_read(real_series):
    assert sorted((name, len(s.frames)) for name, s in real_series.items()) == [
        ("barre_XA-MONO2-8-12x-catheter.dcm", 12),
        ("philips_integris_cath_I_000000.dcm", 75),
        ("rubo_small_multiframe.dcm", 17),
    ]
    times = {name: s.frame_time_ms for name, s in real_series.items()}
    assert times == {
        "barre_XA-MONO2-8-12x-catheter.dcm": pytest.approx(33.0),
        "philips_integris_cath_I_000000.dcm": pytest.approx(66.666667),
        "rubo_small_multiframe.dcm": pytest.approx(66.0),
    }
    assert all(s.frames.shape[1:] == (512, 512) and s.frames.dtype == np.uint8 for s in real_series.values())
    assert any("README.md: skipped, is not a DICOM file" in r for r in real_series["rubo_small_multiframe.dcm"].skipped)
    # The Philips file has a ModalityLUTSequence, LOG intensities and WindowCenter/Width 127/255:
    # recompute its frames from pydicom's decoding, the Modality LUT and the DICOM LINEAR window.
    philips = real_series["philips_integris_cath_I_000000.dcm"]
    ds = pydicom.dcmread(REAL_XA / "philips_integris_cath_I_000000.dcm")
    reference = linear_window_u8(apply_modality_lut(ds.pixel_array, ds).astype(np.float64), 127, 255)
    np.testing.assert_array_equal(philips.frames, reference)
    assert philips.intensity_relationship == "LOG" and "window" in philips.windowing
    # No window in the others: the series' own 0.5-99.5 percentile window spans the 8-bit range.
    barre = real_series["barre_XA-MONO2-8-12x-catheter.dcm"]
    assert barre.windowing.startswith("percentile") and (barre.frames.min(), barre.frames.max()) == (0, 255)


@needs_real_xa
def test_real_jpeg_lossless_file_through_prepare_dicom(tmp_path, capsys, real_series):
    out = tmp_path / "out"
    source = REAL_XA / "barre_XA-MONO2-8-12x-catheter.dcm"
    rc, stdout, stderr = prepare(capsys, "--input", source, "--out", out, "--salt", "fixture-salt")
    assert rc == 0, stderr
    assert "wrote 1 series (12 frames, 1 patients)" in stdout
    cohort = load(out)
    assert cohort_problems(cohort, out / "cohort.json") == []
    (video,) = cohort["videos"]
    assert video["frame_time_ms"] == pytest.approx(33.0) and (video["width"], video["height"]) == (512, 512)
    written = np.stack([np.asarray(Image.open(out / i["file_name"])) for i in cohort["images"]])
    np.testing.assert_array_equal(written, real_series[source.name].frames)
    assert video["name"] == real_series[source.name].series_key  # the same salt gives the same pseudonyms


@needs_real_xa
def test_real_jpeg_lossless_needs_a_decoder(tmp_path, capsys, monkeypatch):
    from pydicom.pixels.common import CoderBase

    monkeypatch.setattr(CoderBase, "is_available", property(lambda self: not self.UID.is_encapsulated))
    target = REAL_XA / "barre_XA-MONO2-8-12x-catheter.dcm"
    rc, _, stderr = prepare(capsys, "--input", target, "--out", tmp_path / "out")
    assert rc == 2
    assert str(target) in stderr and "pylibjpeg" in stderr and "JPEG Lossless" in stderr
    assert not (tmp_path / "out").exists()


# ---- prepare-dicom: outputs, boxes, salt, overwrite ------------------------------------------------
def make_input(root: Path) -> Path:
    """A folder with a multi-frame run (8-bit), an RLE run (12-bit) and a 3-file single-frame series."""
    write_xa(root / "run1.dcm", ramp_frames(5, 24), frame_time=50.0, identity=make_identity(0))
    write_xa(root / "sub" / "run2.dcm", ramp_frames(4, 24, 0, 4095, "uint16"), bits_stored=12,
             transfer_syntax=RLELossless, identity=make_identity(1), cine_rate=10.0)
    write_single_frame_series(root / "series7", ramp_frames(3, 24, 0, 1000, "uint16"), identity=make_identity(2),
                              transfer_syntax=ImplicitVRLittleEndian, order=[2, 1, 0])
    return root


def load(out: Path) -> dict:
    return json.loads((out / "cohort.json").read_text())


def test_prepare_dicom_writes_a_valid_cohort_with_boxes(tmp_path, capsys):
    source = make_input(tmp_path / "in")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({
        "run1.dcm": [{"frame": 2, "bbox": [1, 2, 10, 8]}, {"frame": 3, "bbox": [0, 0, 24, 24]}],
        "series7/IM0001.dcm": [{"bbox": [4, 4, 5, 5], "instance_id": 2}],  # holds frame 1 of the series
        make_identity(1)["SeriesInstanceUID"]: [{"frame": 3, "bbox": [3, 3, 2.5, 2.5]}],
    }))
    out = tmp_path / "out"
    rc, stdout, stderr = prepare(capsys, "--input", source, "--out", out, "--boxes", boxes, "--cohort-name", "siteA")
    assert rc == 0, stderr
    cohort = load(out)
    assert cohort_problems(cohort, out / "cohort.json") == []
    assert {v["cohort"] for v in cohort["videos"]} == {"siteA"}
    assert all(re.fullmatch(r"S-[0-9a-f]{16}", v["name"]) for v in cohort["videos"])
    assert all(re.fullmatch(r"P-[0-9a-f]{16}", v["patient_id"]) for v in cohort["videos"])
    assert sorted((v["num_frames"], v["frame_time_ms"]) for v in cohort["videos"]) == [(3, None), (4, 100.0), (5, 50.0)]
    assert sorted(v["num_frames"] for v in cohort["videos"]) == [3, 4, 5]
    assert sorted(os.listdir(out)) == sorted([MARKER_FILE, "cohort.json", "frames"])
    assert sorted(os.listdir(out / "frames")) == sorted(v["name"] for v in cohort["videos"])
    video_of = {v["id"]: v for v in cohort["videos"]}
    image_of = {i["id"]: i for i in cohort["images"]}
    placed = sorted(
        (video_of[image_of[a["image_id"]]["video_id"]]["num_frames"], image_of[a["image_id"]]["frame_id"], a["bbox"])
        for a in cohort["annotations"]
    )
    assert placed == [(3, 1, [4, 4, 5, 5]), (4, 3, [3, 3, 2.5, 2.5]), (5, 2, [1, 2, 10, 8]), (5, 3, [0, 0, 24, 24])]
    for image in cohort["images"]:
        assert image["file_name"] == f"frames/{video_of[image['video_id']]['name']}/{image['frame_id']:03d}.png"
        png = Image.open(out / image["file_name"])
        assert png.mode == "L" and png.size == (24, 24)
    assert "wrote 3 series (12 frames, 3 patients)" in stdout


def test_rerun_reuses_the_user_salt_and_overwrite_replaces(tmp_path, capsys, salt_file):
    source = make_input(tmp_path / "in")
    out = tmp_path / "out"
    rc, _, stderr = prepare(capsys, "--input", source, "--out", out)
    assert rc == 0 and f"created a new pseudonymisation salt in {salt_file}" in stderr
    first = load(out)
    assert {v["cohort"] for v in first["videos"]} == {"dicom"}
    salt = salt_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", salt) and salt_file.stat().st_mode & 0o777 == 0o600
    (out / "frames" / first["videos"][0]["name"] / "000.png").write_bytes(b"tampered")
    rc, _, stderr = prepare(capsys, "--input", source, "--out", out)
    assert rc == 2 and "--overwrite" in stderr and "Nothing was written" in stderr
    assert (out / "frames" / first["videos"][0]["name"] / "000.png").read_bytes() == b"tampered"
    assert prepare(capsys, "--input", source, "--out", out, "--overwrite")[0] == 0
    assert load(out) == first and salt_file.read_text() == salt  # the same pseudonyms on a rerun
    Image.open(out / "frames" / first["videos"][0]["name"] / "000.png").load()
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # no lock file or build folder left


def test_explicit_salt_links_patients_across_output_folders(tmp_path, capsys, monkeypatch, salt_file):
    source = make_input(tmp_path / "in")
    assert prepare(capsys, "--input", source, "--out", tmp_path / "a", "--salt", "k1")[0] == 0
    monkeypatch.setenv("PERFORATION_D2_SALT", "k1")
    assert prepare(capsys, "--input", source, "--out", tmp_path / "b")[0] == 0
    assert prepare(capsys, "--input", source, "--out", tmp_path / "c", "--salt", "k2")[0] == 0
    a, b, c = (load(tmp_path / name) for name in "abc")
    assert [v["patient_id"] for v in a["videos"]] == [v["patient_id"] for v in b["videos"]]
    assert {v["patient_id"] for v in a["videos"]}.isdisjoint(v["patient_id"] for v in c["videos"])
    assert not salt_file.exists()  # an explicit salt never creates the per-user one


def test_the_salt_is_never_written_into_the_output(tmp_path, capsys, monkeypatch, salt_file):
    source = make_input(tmp_path / "in")
    rc, stdout, stderr = prepare(capsys, "--input", source, "--out", tmp_path / "a")
    assert rc == 0
    salt = salt_file.read_text().strip()
    rc, stdout2, stderr2 = prepare(capsys, "--input", source, "--out", tmp_path / "b", "--salt", "k-secret-4711")
    assert rc == 0
    for out, secret in ((tmp_path / "a", salt), (tmp_path / "b", "k-secret-4711")):
        files = [p for p in out.rglob("*") if p.is_file()]
        assert files and not any(secret.encode() in p.read_bytes() for p in files), out
        assert not any(secret in p.name for p in out.rglob("*"))
    assert salt not in stdout + stderr and "k-secret-4711" not in stdout2 + stderr2
    # The same user's imports into different folders link patients; another user's do not.
    assert prepare(capsys, "--input", source, "--out", tmp_path / "c")[0] == 0
    assert [v["patient_id"] for v in load(tmp_path / "a")["videos"]] == [v["patient_id"] for v in load(tmp_path / "c")["videos"]]
    monkeypatch.setenv("PERFORATION_D2_SALT_FILE", str(tmp_path.parent / f"{tmp_path.name}-other-user-salt"))
    assert prepare(capsys, "--input", source, "--out", tmp_path / "d")[0] == 0
    assert {v["patient_id"] for v in load(tmp_path / "a")["videos"]}.isdisjoint(
        v["patient_id"] for v in load(tmp_path / "d")["videos"])


def test_a_salt_file_inside_the_output_folder_is_refused(tmp_path, capsys, monkeypatch):
    source = make_input(tmp_path / "in")
    monkeypatch.setenv("PERFORATION_D2_SALT_FILE", str(tmp_path / "out" / "salt"))
    rc, _, stderr = prepare(capsys, "--input", source, "--out", tmp_path / "out")
    assert rc == 2 and "lies inside the output folder" in stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_with_foreign_files_is_never_replaced(tmp_path, capsys):
    source = make_input(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    rc, _, stderr = prepare(capsys, "--input", source, "--out", out, "--overwrite")
    assert rc == 2 and "thesis.tex" in stderr
    assert os.listdir(out) == ["thesis.tex"]


# ---- bad input: one paragraph naming the file, exit 2, nothing written ---------------------------
def assert_clean_failure(rc: int, stderr: str, named: Path | str, out: Path, *phrases: str) -> None:
    assert rc == 2
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, stderr
    assert str(named) in error[0], error[0]
    for phrase in phrases:
        assert phrase in error[0], error[0]
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a lock or build folder was left behind"


def write_bad_input(kind: str, folder: Path) -> tuple[Path, Path, str]:
    """(--input, the file the error must name, a phrase of the message) for each bad-input kind."""
    target = folder / "bad.dcm"
    if kind == "non_dicom":
        target.write_bytes(b"just some text, no preamble" * 20)
        return target, target, "not a DICOM file"
    if kind == "corrupt":
        write_xa(target, ramp_frames(2, 16))
        data = bytearray(target.read_bytes())
        data[140:400] = np.random.default_rng(1).integers(0, 256, 260, dtype=np.uint8).tobytes()  # header destroyed
        target.write_bytes(bytes(data))
        return target, target, "bad.dcm"
    if kind == "only_ct":
        write_xa(target, ramp_frames(2, 16), modality="CT", sop_class=CT_SOP_CLASS)
        return folder, folder, "no XA/XRF image series"
    if kind == "zero_frames":
        write_xa(target, ramp_frames(2, 16), number_of_frames=0)
        return target, target, "0 frames"
    if kind == "empty_pixel_data":
        write_xa(target, ramp_frames(2, 16), extra={"PixelData": b""})
        return target, target, "no pixel data"
    if kind == "inconsistent_sizes":
        identity = make_identity()
        write_single_frame_series(folder / "s", ramp_frames(2, 16), identity=identity)
        target = write_xa(folder / "s" / "odd.dcm", ramp_frames(1, 20)[0], identity=identity,
                          instance_number=9, number_of_frames=None)
        return folder, target, "20 x 20"
    if kind == "absurd_frames":
        write_xa(target, ramp_frames(2, 16), extra={"NumberOfFrames": 2**31 - 1})
        return target, target, "2147483647 frames"
    if kind == "huge_rows_columns":
        write_xa(target, ramp_frames(2, 16), extra={"Rows": 65535, "Columns": 65535, "NumberOfFrames": 500})
        return target, target, "65535 x 65535"
    if kind == "truncated_native":
        write_xa(target, ramp_frames(4, 32, 0, 4095, "uint16"), bits_stored=12)
        target.write_bytes(target.read_bytes()[:-3000])
        return target, target, "truncated"
    if kind == "truncated_rle":
        write_xa(target, ramp_frames(4, 32, 0, 4095, "uint16"), bits_stored=12, transfer_syntax=RLELossless)
        target.write_bytes(target.read_bytes()[:-700])
        return target, target, "bad.dcm"
    if kind == "missing_decoder":
        write_xa(target, ramp_frames(2, 16), transfer_syntax=RLELossless)
        return target, target, "pylibjpeg"
    raise AssertionError(kind)


BAD_KINDS = [
    "non_dicom", "corrupt", "only_ct", "zero_frames", "empty_pixel_data", "inconsistent_sizes",
    "absurd_frames", "huge_rows_columns", "truncated_native", "truncated_rle", "missing_decoder",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_fails_cleanly(tmp_path, capsys, monkeypatch, kind):
    folder = tmp_path / "in"
    folder.mkdir()
    source, named, phrase = write_bad_input(kind, folder)
    if kind == "missing_decoder":
        from pydicom.pixels.common import CoderBase

        monkeypatch.setattr(CoderBase, "is_available", property(lambda self: not self.UID.is_encapsulated))
    out = tmp_path / "out"
    # In a folder an odd file is skipped and the rest imported (see the skip tests); --strict fails.
    strict = ["--strict"] if source.is_dir() and kind != "only_ct" else []
    rc, _, stderr = prepare(capsys, "--input", source, "--out", out, *strict)
    assert_clean_failure(rc, stderr, named, out, phrase)


def test_bad_boxes_are_all_listed_without_echoing_uids(tmp_path, capsys):
    source = make_input(tmp_path / "in")
    boxes = tmp_path / "boxes.json"
    unknown_uid = "1.2.826.0.1.3680043.8.498.999"
    boxes.write_text(json.dumps({
        "run1.dcm": [{"frame": 5, "bbox": [0, 0, 4, 4]}, {"frame": 0, "bbox": [20, 20, 8, 8]}],
        "nope.dcm": [],
        unknown_uid: [{"frame": 0, "bbox": [0, 0, 1, 1]}],
        make_identity(1)["SeriesInstanceUID"]: [{"frame": 9, "bbox": [0, 0, 1, 1]}],
    }))
    out = tmp_path / "out"
    rc, _, stderr = prepare(capsys, "--input", source, "--out", out, "--boxes", boxes)
    assert_clean_failure(rc, stderr, boxes, out, "5 problems", "frame 5 does not exist", "outside the 24 x 24",
                         "'nope.dcm': matches no", "key #3 (a UID)", "key #4 (a UID), box #0: frame 9")
    assert unknown_uid not in stderr and make_identity(1)["SeriesInstanceUID"] not in stderr


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ("{not json", "not valid JSON"),
        ('["run1.dcm"]', "JSON object"),
        ('{"run1.dcm": [{"bbox": [0, 0, 0, 3]}]}', "non-positive box size"),
        ('{"run1.dcm": [{"bbox": [0, 0, 3]}]}', "four finite numbers"),
        ('{"run1.dcm": [{"bbox": [0, 0, 3, 3], "frames": 2}]}', "unknown field"),
    ],
)
def test_malformed_boxes_file(tmp_path, capsys, content, phrase):
    source = make_input(tmp_path / "in")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(content)
    out = tmp_path / "out"
    rc, _, stderr = prepare(capsys, "--input", source, "--out", out, "--boxes", boxes)
    assert_clean_failure(rc, stderr, boxes, out, phrase)


# ---- concurrency and interruption (issue 6.7) ------------------------------------------------------
def test_a_second_run_while_one_holds_the_lock_fails_and_changes_nothing(tmp_path, capsys):
    source = make_input(tmp_path / "in")
    out = tmp_path / "out"
    assert prepare(capsys, "--input", source, "--out", out)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with folder_lock(out, "prepare-dicom"):
        rc, _, stderr = prepare(capsys, "--input", source, "--out", out, "--overwrite")
    assert rc == 2 and "another prepare-dicom run" in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_two_concurrent_runs_into_one_folder_leave_one_complete_cohort(tmp_path, capsys, monkeypatch):
    source = make_input(tmp_path / "in")
    out = tmp_path / "out"
    started = threading.Barrier(2)
    add_frame = CohortWriter.add_frame

    def add_frame_slowly(self, *args, **kwargs):
        threading.Event().wait(0.01)  # widen the window in which the two runs overlap
        return add_frame(self, *args, **kwargs)

    monkeypatch.setattr(CohortWriter, "add_frame", add_frame_slowly)
    codes = []

    def one_run(salt):
        started.wait()
        codes.append(cli.main(["prepare-dicom", "--input", str(source), "--out", str(out), "--overwrite",
                               "--salt", salt]))

    threads = [threading.Thread(target=one_run, args=(salt,)) for salt in ("s1", "s2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(codes) in ([0, 0], [0, 2])
    cohort = load(out)
    assert cohort_problems(cohort, out / "cohort.json") == []
    # Every frame on disk belongs to the published cohort: no mixture of the two runs.
    on_disk = sorted(p.relative_to(out).as_posix() for p in (out / "frames").rglob("*.png"))
    assert on_disk == sorted(i["file_name"] for i in cohort["images"])
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]


def test_interrupted_run_leaves_the_previous_output_untouched(tmp_path, capsys, monkeypatch):
    source = make_input(tmp_path / "in")
    out = tmp_path / "out"
    assert prepare(capsys, "--input", source, "--out", out)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []
    add_frame = CohortWriter.add_frame

    def interrupted(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return add_frame(self, *args, **kwargs)

    monkeypatch.setattr(CohortWriter, "add_frame", interrupted)
    rc, _, stderr = prepare(capsys, "--input", source, "--out", out, "--overwrite")
    assert rc == 130 and "interrupted" in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]


def test_leftovers_of_a_killed_run_are_removed_and_never_trusted(tmp_path, capsys):
    source = make_input(tmp_path / "in")
    out = tmp_path / "out"
    stale = tmp_path / ".out.building-dead"
    (stale / "frames" / "S-x").mkdir(parents=True)
    (stale / "cohort.json").write_text("{}")
    (tmp_path / ".out.lock").write_text("")  # a killed run's lock file: flock died with the process
    rc, _, stderr = prepare(capsys, "--input", source, "--out", out)
    assert rc == 0, stderr
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]
    assert cohort_problems(load(out), out / "cohort.json") == []


def test_memory_cap_is_checked_before_decoding(tmp_path, monkeypatch):
    from perforation_d2.data.dicom import decode

    write_xa(tmp_path / "run.dcm", ramp_frames(3, 16))  # 768 bytes once decoded
    decoded = []
    monkeypatch.setattr(decode, "decode_file", lambda header, *args: decoded.append(header))
    with pytest.raises(DSAInputError, match="more than the limit of"):
        read_dicom_series(tmp_path, salt="s", max_decoded_bytes=700)
    assert decoded == []
