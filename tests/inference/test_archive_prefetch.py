"""``predict`` decodes the next series in a background thread (``data.prefetch``) while one is
predicted: the output folder, the skip list and every error are those of decoding in turn (the
reference: ``archive.Prefetch`` forced to depth 0), and no loading thread outlives the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cohorts import make_toy_cohort
from helpers.dicom_factory import make_identity, ramp_frames, write_xa
from helpers.quick_model import write_quick_model
from helpers.salt import use_salt_file
from helpers.threads import one_thread, prefetch_threads  # noqa: F401 (one_thread: autouse, one intra-op thread)

import perforation_d2.inference.archive as archive
from perforation_d2.cli import main
from perforation_d2.data.prefetch import Prefetch


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    return write_quick_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(autouse=True)
def _salt(tmp_path_factory, monkeypatch):
    use_salt_file(tmp_path_factory, monkeypatch, "prefetch-test-salt")


def run(model, monkeypatch, capsys, input_path: Path, out: Path, sequential: bool, *extra: str):
    """``predict`` once; returns (exit code, stdout, stderr, every output file's bytes)."""
    with monkeypatch.context() as patch:
        if sequential:
            patch.setattr(archive, "Prefetch", lambda items, load, depth=1: Prefetch(items, load, 0))
        config, weights = model
        code = main(["predict", "--config-file", str(config), "--weights", str(weights), "--input", str(input_path),
                     "--out", str(out), "--device", "cpu", *extra])
    captured = capsys.readouterr()
    assert not prefetch_threads(), "a loading thread outlived the run"
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} if out.exists() else {}
    return code, captured.out.replace(str(out), "OUT"), captured.err, files


def dicom_folder(folder: Path) -> Path:
    """Four good series and, second in the reading order, one whose pixel data is cut short."""
    for index, name in enumerate(["a_good", "b_cut", "c_good", "d_good", "e_good"]):
        write_xa(folder / f"{name}.dcm", ramp_frames(3 + index % 2, 32), identity=make_identity(index, patient=index))
    (folder / "b_cut.dcm").write_bytes((folder / "b_cut.dcm").read_bytes()[:-1500])
    return folder


def test_a_folder_with_a_bad_series_gives_the_sequential_outputs_and_skips(model, monkeypatch, capsys, tmp_path):
    folder = dicom_folder(tmp_path / "dicom")
    overlapped = run(model, monkeypatch, capsys, folder, tmp_path / "overlapped", False)
    sequential = run(model, monkeypatch, capsys, folder, tmp_path / "sequential", True)
    assert overlapped[0] == sequential[0] == 0
    assert overlapped[1:] == sequential[1:]  # stdout, the skip lines on stderr, every output byte
    assert f"skipped: {folder / 'b_cut.dcm'}: skipped, the pixel data holds" in overlapped[2]
    assert sum(name.endswith(".gif") for name in overlapped[3]) == 4


def test_strict_fails_at_the_bad_series_with_the_sequential_error(model, monkeypatch, capsys, tmp_path):
    folder = dicom_folder(tmp_path / "dicom")
    overlapped = run(model, monkeypatch, capsys, folder, tmp_path / "overlapped", False, "--strict")
    sequential = run(model, monkeypatch, capsys, folder, tmp_path / "sequential", True, "--strict")
    assert overlapped[0] == sequential[0] == 2
    assert overlapped[2] == sequential[2]
    assert overlapped[2].startswith("error: ") and "b_cut.dcm" in overlapped[2] and "Traceback" not in overlapped[2]
    assert overlapped[3] == sequential[3] == {}  # nothing written


def test_an_unreadable_cohort_frame_is_the_sequential_error(model, monkeypatch, capsys, tmp_path):
    cohort = make_toy_cohort(tmp_path / "cohort", num_patients=4, frames=[3, 2, 4, 2], size=40)
    bad = cohort.parent / "frames" / "v3" / "001.png"
    bad.write_bytes(b"not a PNG")
    overlapped = run(model, monkeypatch, capsys, cohort, tmp_path / "overlapped", False)
    sequential = run(model, monkeypatch, capsys, cohort, tmp_path / "sequential", True)
    assert overlapped[0] == sequential[0] == 2
    assert overlapped[2] == sequential[2] == f"error: {bad}: is not a readable image (a cohort frame must be a PNG file).\n"
    assert overlapped[3] == sequential[3] == {}
