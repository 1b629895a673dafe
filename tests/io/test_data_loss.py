"""The output-ownership rule through the real commands: no run ever costs a user's files.

Each case is a way a command used to delete or replace what it had not written: a folder whose
top level holds only a sub-folder, another tool's ``cohort.json`` or ``manifest.json``, files a
user added to an output folder. Every command is run through ``perforation_d2.cli.main``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cohorts import make_toy_cohort
from helpers.dicom_factory import make_identity, ramp_frames, write_xa

from perforation_d2.cli import main
from perforation_d2.io.ownership import MARKER_FILE


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_of(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and err.strip().count("\n") == 0, err
    return err


@pytest.fixture
def dicom_input(tmp_path) -> Path:
    source = tmp_path / "in"
    write_xa(source / "run1.dcm", ramp_frames(3, 16), frame_time=50.0, identity=make_identity(0))
    return source


def prepare_dicom(source: Path, out: Path, *extra: str) -> int:
    return main(["prepare-dicom", "--input", str(source), "--out", str(out), "--salt", "test-salt", *extra])


def synth(out: Path, *extra: str) -> int:
    return main(["synth", "--out", str(out), "--patients", "1", "--seed", "0", "--size", "64", "--max-frames", "2",
                 "--no-preview", *extra])


@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_prepare_dicom_never_replaces_a_folder_holding_only_the_users_frames(tmp_path, capsys, dicom_input, flag):
    out = tmp_path / "out"
    (out / "frames" / "mine").mkdir(parents=True)
    for k in range(3):
        (out / "frames" / "mine" / f"{k}.png").write_bytes(b"user png %d" % k)
    before = tree(out)
    err = error_of(capsys, prepare_dicom(dicom_input, out, *flag))
    assert "frames/" in err and str(out) in err
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


@pytest.mark.parametrize("command", ["prepare-dicom", "synth"])
def test_overwrite_never_replaces_another_tools_cohort(tmp_path, capsys, dicom_input, command):
    out = tmp_path / "out"
    make_toy_cohort(out, num_patients=1, frames=2, size=32)  # cohort.json + frames/, but no marker
    (out / "notes.txt").write_text("the user's notes")
    before = tree(out)
    rc = prepare_dicom(dicom_input, out, "--overwrite") if command == "prepare-dicom" else synth(out, "--overwrite")
    err = error_of(capsys, rc)
    assert "cohort.json" in err and "notes.txt" in err
    assert tree(out) == before


def test_synth_overwrite_keeps_the_files_a_user_added(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert synth(out) == 0
    frame_folder = next((out / "frames").iterdir())
    (out / "my_notes.txt").write_text("keep me")
    (frame_folder / "annotated_by_me.png").write_bytes(b"keep me too")
    assert synth(out, "--overwrite", "--seed", "1") == 0
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert (frame_folder / "annotated_by_me.png").read_bytes() == b"keep me too"
    listed = json.loads((out / MARKER_FILE).read_text())["outputs"]["synth"]
    assert "my_notes.txt" not in listed and "cohort.json" in listed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


def test_prepare_dicom_overwrite_keeps_the_files_a_user_added(tmp_path, capsys, dicom_input):
    out = tmp_path / "out"
    assert prepare_dicom(dicom_input, out) == 0
    (out / "README.txt").write_text("where these came from")
    assert prepare_dicom(dicom_input, out, "--overwrite") == 0
    assert (out / "README.txt").read_text() == "where these came from"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_predict_overwrite_never_trusts_a_foreign_manifest(tmp_path, capsys):
    """A manifest.json of another tool lists the user's files and a folder: nothing is deleted."""
    cohort = make_toy_cohort(tmp_path / "cohort", num_patients=1, frames=2, size=32)
    out = tmp_path / "out"
    (out / "scans").mkdir(parents=True)
    (out / "scans" / "a.bin").write_bytes(b"user data")
    (out / "predictions.txt").write_text("user file")
    (out / "manifest.json").write_text(json.dumps(
        {"files": {"predictions.txt": "x", "scans": "x", "scans/a.bin": "x", "../outside.txt": "x"}}
    ))
    (tmp_path / "outside.txt").write_text("outside")
    before = tree(out)
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"not reached")
    rc = main(["predict", "--config-file", "configs/quick/retinanet.yaml", "--weights", str(weights),
               "--input", str(cohort), "--out", str(out), "--device", "cpu", "--overwrite"])
    err = error_of(capsys, rc)
    assert "manifest.json" in err and "not written by perforation_d2" in err
    assert tree(out) == before and (tmp_path / "outside.txt").read_text() == "outside"


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_out_naming_a_file_or_a_path_under_one_is_a_clean_error(tmp_path, capsys, where):
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "cohort"
    err = error_of(capsys, synth(out))
    assert str(out) in err and "is a file" in err
    assert (tmp_path / "taken").read_text() == "a file"
