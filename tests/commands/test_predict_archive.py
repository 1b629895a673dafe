"""``predict`` on an archive: series sharded over two gloo CPU workers, and ``--resume`` after a kill.

The reference is always a plain single-process run: two workers, and a run killed with SIGKILL
then resumed, must leave the very same folder (every file's bytes, the manifest and the output
marker included; no progress or staging left). ``--resume`` must predict only the series the
killed run had not finished, and never use progress recorded for other weights or threshold.
Errors met by a worker, and bad distributed arguments, are one paragraph like any other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.cohorts import make_toy_cohort
from helpers.dicom_factory import make_identity, ramp_frames, write_single_frame_series, write_xa
from helpers.quick_model import write_quick_model
from helpers.salt import use_salt_file

import perforation_d2.evaluation.predictions as predictions
import perforation_d2.inference.archive as archive
from perforation_d2.cli import main

REPO = Path(__file__).resolve().parents[2]
NUM_SERIES = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    return write_quick_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(autouse=True)
def _environment(tmp_path_factory, monkeypatch):
    """One thread per process (workers inherit it), CPU workers, and a salt file of the test's own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    use_salt_file(tmp_path_factory, monkeypatch, "archive-test-salt")
    yield
    torch.set_num_threads(threads)


def command(model, input_path: Path, out: Path, *extra: str, weights: Path | None = None) -> list[str]:
    config, default_weights = model
    return ["predict", "--config-file", str(config), "--weights", str(weights or default_weights),
            "--input", str(input_path), "--out", str(out), "--device", "cpu", *extra]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_two_gloo_processes_write_what_one_process_writes(model, tmp_path, capfd):
    dicom = tmp_path / "dicom"
    for index in range(4):  # four series: two per worker
        write_xa(dicom / f"run{index}.dcm", ramp_frames(3 + index % 2, 32), identity=make_identity(index))
    write_single_frame_series(dicom / "single", ramp_frames(2, 32), identity=make_identity(4))
    write_xa(dicom / "cut.dcm", ramp_frames(3, 32), identity=make_identity(5))  # skipped when decoded
    (dicom / "cut.dcm").write_bytes((dicom / "cut.dcm").read_bytes()[:-1500])

    assert main(command(model, dicom, tmp_path / "one")) == 0
    one = capfd.readouterr()
    assert main(command(model, dicom, tmp_path / "two", "--num-gpus", "2", "--dist-url", "auto")) == 0
    two = capfd.readouterr()

    reference = folder_bytes(tmp_path / "one")
    assert len(reference) == 4 + 1 + 2 * 5  # JSON files, manifest, marker, two overlays per readable series
    assert folder_bytes(tmp_path / "two") == reference
    # The same console report, the decoding skip (met by one worker) listed once.
    lines = [line for line in one.out.splitlines() if line.startswith(("S-", "threshold", "wrote", "1 input"))]
    assert len(lines) == 1 + 5 + 2
    two_lines = two.out.replace(str(tmp_path / "two"), str(tmp_path / "one")).splitlines()
    assert [line for line in two_lines if line in lines] == lines
    skip = [line for line in one.err.splitlines() if line.startswith("skipped:")]
    assert len(skip) == 1 and "cut.dcm" in skip[0]
    assert [line for line in two.err.splitlines() if line.startswith("skipped:")] == skip


def count_predictions(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """The first image id of every series predicted from now on (Ctrl-C at call ``interrupt_at``)."""
    predicted = []
    original = predictions.predict_one_series  # the real one, also when a counter is already in place

    def counted(predictor, frames, image_ids, series_optimization=True):
        predicted.append(image_ids[0])
        if len(predicted) == interrupt_at:
            raise KeyboardInterrupt
        return original(predictor, frames, image_ids, series_optimization)

    monkeypatch.setattr(archive, "predict_one_series", counted)
    return predicted


def _cohort(tmp_path: Path) -> Path:
    return make_toy_cohort(tmp_path / "cohort", num_patients=NUM_SERIES, frames=[5, 3, 4, 2, 5, 3, 4, 2], size=40)


def test_resume_after_sigkill_predicts_only_the_missing_series(model, tmp_path, capfd):
    cohort = _cohort(tmp_path)
    assert main(command(model, cohort, tmp_path / "reference")) == 0
    capfd.readouterr()

    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "perforation_d2", *command(model, cohort, out, "--resume")],
                               cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((out / "progress").glob("*.zip"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(int(p.stem) for p in (out / "progress").glob("*.zip"))
    assert 2 <= len(done) < NUM_SERIES, f"the kill came too late to test anything: {done}"
    assert not (out / "manifest.json").exists()

    # Resumed on two workers: they share the missing series only.
    assert main(command(model, cohort, out, "--resume", "--num-gpus", "2", "--dist-url", "auto")) == 0
    captured = capfd.readouterr().out
    assert (f"resume: {NUM_SERIES - len(done)} series predicted now, {len(done)} taken from the progress of an "
            "earlier run") in captured
    assert folder_bytes(out) == folder_bytes(tmp_path / "reference")  # no progress, no staging left


def test_resume_refuses_progress_of_other_weights_and_predicts_only_what_is_missing(model, tmp_path, capsys,
                                                                                  monkeypatch):
    cohort = _cohort(tmp_path)
    out = tmp_path / "out"
    predicted = count_predictions(monkeypatch, interrupt_at=4)
    assert main(command(model, cohort, out, "--resume")) == 130  # Ctrl-C during the 4th series
    assert len(predicted) == 4
    capsys.readouterr()
    assert sorted(p.name for p in (out / "progress").iterdir()) == ["1.zip", "2.zip", "3.zip", "run.json"]

    def refused(*args: str, **kwargs) -> str:
        before = folder_bytes(out)
        assert main(command(model, cohort, out, *args, **kwargs)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert folder_bytes(out) == before, "a refused run changed the folder"
        return err

    other = tmp_path / "other.pth"
    checkpoint = torch.load(model[1], weights_only=True)
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = checkpoint["model"][name] + 1e-3
    torch.save(checkpoint, other)
    err = refused("--resume", weights=other)
    assert "differs from this one in the weights (--weights), so" in err
    assert "--overwrite" in err
    err = refused("--resume", "--threshold", "0.5")
    assert "differs from this one in the decision threshold (--threshold / --operating-point), so" in err
    assert "pass --resume to continue it" in refused()  # a plain run does not silently drop the progress

    predicted = count_predictions(monkeypatch)
    assert main(command(model, cohort, out, "--resume")) == 0
    assert not (out / "progress").exists()  # removed with the final commit
    cohort_json = json.loads(cohort.read_text())
    first_frames = {image["video_id"]: image["id"] for image in cohort_json["images"] if image["frame_id"] == 0}
    assert sorted(predicted) == sorted(first_frames[v] for v in range(4, NUM_SERIES + 1))  # series 4..8 only
    assert "resume: 5 series predicted now, 3 taken" in capsys.readouterr().out

    assert main(command(model, cohort, tmp_path / "reference")) == 0
    assert folder_bytes(out) == folder_bytes(tmp_path / "reference")
    # Complete: nothing to resume; a changed-weights restart needs --overwrite and then replaces everything.
    assert "nothing to resume" in refused("--resume")
    assert main(command(model, cohort, out, "--resume", "--overwrite", weights=other)) == 0
    assert not (out / "progress").exists()


def test_bad_distributed_arguments_and_a_worker_error_are_one_paragraph(model, tmp_path, capfd):
    dicom = tmp_path / "dicom"
    write_xa(dicom / "cut.dcm", ramp_frames(3, 32), identity=make_identity(0))  # found, then undecodable
    (dicom / "cut.dcm").write_bytes((dicom / "cut.dcm").read_bytes()[:-1500])
    assert main(command(model, dicom, tmp_path / "o1", "--num-machines", "2")) == 2
    assert "needs --dist-url tcp://HOST:PORT" in capfd.readouterr().err
    assert main(command(model, dicom, tmp_path / "o2", "--machine-rank", "1")) == 2
    assert "must be below --num-machines 1" in capfd.readouterr().err
    # Raised in worker 0 (the only series cannot be decoded): its paragraph, no traceback, nothing written.
    assert main(command(model, dicom, tmp_path / "o3", "--num-gpus", "2")) == 2
    err = capfd.readouterr().err
    assert "error: no series of the input could be read; nothing was written" in err and "Traceback" not in err
    assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").iterdir())
