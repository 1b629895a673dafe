"""The main job (README's first command) end to end at toy size: every step runs for real."""

from __future__ import annotations

import json

import pytest

from perforation_d2.cli import main
from perforation_d2.commands import demo
from perforation_d2.experiments.report_text import format_mean_std
from perforation_d2.io.ownership import MARKER_FILE

# A third temporal model beside the demo's own, so that the report is shown to handle any number.
EXTRA_MODEL = ("tattn", "RetinaNet + temporal attention (T=5)", "quick/retinanet_tattn_T5.yaml")


def test_demo_runs_end_to_end_and_writes_the_report(tmp_path, capsys, monkeypatch):
    if len(demo.MODELS) < 3:
        monkeypatch.setattr(demo, "MODELS", [*demo.MODELS, EXTRA_MODEL])
    shorts = [short for short, _, _ in demo.MODELS]
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--patients", "12", "--size", "64", "--folds", "2", "--iters", "3",
            "--bootstrap", "20"]
    assert main(argv) == 0
    report = (out / "report" / "report.md").read_text()
    compare = json.loads((out / "compare" / "compare.json").read_text())
    # Every series is scored once, out of fold (cross-validation), and both models plus the ensemble
    # are in the table; the per-fold AUCs give the spread.
    cohort = json.loads((out / "data" / "synth" / "cohort.json").read_text())
    assert compare["num_series"] == len(cohort["videos"])
    results = json.loads((out / "cv" / "report" / "results.json").read_text())
    assert results["missing"] == [] and set(results["per_split_auc"]) == {"fold0", "fold1"}
    assert "AUC per held-out fold" in report
    assert [m["name"] for m in compare["models"]][:2] == ["RetinaNet (single frame)", "RetinaNet + temporal conv (T=5)"]
    assert [m["name"] for m in compare["models"]] == [title for _, title, _ in demo.MODELS]
    assert "| Ensemble (median) |" in report and "DeLong" in report
    assert "on series AUC" in report and "on series AUC" in capsys.readouterr().out
    assert (out / "report" / "roc_overlay.png").stat().st_size > 0
    assert list((out / "report" / "overlays").glob("*.png"))
    for name in shorts:
        for fold in (0, 1):
            assert (out / "cv" / "jobs" / name / "kfold" / f"fold{fold}" / "run0" / "model_final.pth").exists()
    # The time-use table: normal and time-blind AUCs of every model, as the cross-validation has them.
    assert "## Time use: normal and time-blind AUCs" in report
    section = report.split("## Time use: normal and time-blind AUCs")[1].split("\n## ")[0]
    for short, title, _ in demo.MODELS:
        row = results["time_use"]["models"][short]
        assert row["unchanged_by_construction"] is (short == "single")
        normal = format_mean_std(row["modes"]["none"]["AUC"])
        centre = format_mean_std(row["modes"]["centre"]["AUC"])
        line = next(line for line in section.splitlines() if line.startswith(f"| {title}"))
        assert normal in line and centre in line
    # What the synthetic cohort's true time courses allow, on the same held-out series.
    oracle = results["time_course_oracle"]
    assert set(oracle["per_split"]) == {"fold0", "fold1"} and oracle["pooled"]["series"] == len(cohort["videos"])
    assert "## Time-course oracle" in report and f"| pooled | {oracle['pooled']['AUC']:.3f} |" in report
    # The held-out AUC over training: --curve-points 4 at 3 iterations evaluates after each one.
    curve = json.loads((out / "cv" / "report" / "training_curve.json").read_text())
    assert set(curve) == set(shorts)
    assert all(list(entry["mean"]) == ["1", "2", "3"] and len(entry["lines"]) == 2 for entry in curve.values())
    assert (out / "report" / "training_curve.png").read_bytes().startswith(b"\x89PNG")
    assert "![held-out AUC over training](training_curve.png)" in report and "never for model selection" in report
    # The folder's marker lists every file the demo wrote (so --overwrite removes exactly those).
    marker = json.loads((out / MARKER_FILE).read_text())
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MARKER_FILE}
    assert set(marker["outputs"]["demo"]) == written

    # --overwrite replaces an earlier demo folder, but never a folder the demo did not write.
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("data")
    assert main(["demo", "--out", str(other), "--overwrite"]) == 2
    assert (other / "keep.txt").read_text() == "data"
    assert "holds no earlier demo output" in capsys.readouterr().err


def test_demo_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    other = tmp_path / "precious"
    (other / "data" / "synth").mkdir(parents=True)
    (other / "data" / "synth" / "cohort.json").write_text("{}")  # looks like a demo folder, is not one
    assert main(["demo", "--out", str(other), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds no earlier demo output" in err and "data/" in err
    assert sorted(p.relative_to(other).as_posix() for p in other.rglob("*")) == ["data", "data/synth",
                                                                                  "data/synth/cohort.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]  # no lock file left beside it


@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_demo_refuses_a_non_empty_folder(tmp_path, capsys, flag):
    (tmp_path / "x.txt").write_text("x")
    assert main(["demo", "--out", str(tmp_path), *flag]) == 2
    assert (tmp_path / "x.txt").exists()
    assert str(tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--seed", "-1"], ["--size", "0"], ["--folds", "1"], ["--bootstrap", "100000000"],
                                 ["--patients", "0"], ["--iters", "x"]])
def test_bad_arguments_stop_before_any_work(tmp_path, capsys, bad):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as stopped:
        main(["demo", "--out", str(out), *bad])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert bad[0] in err and "Traceback" not in err
    assert not out.exists()
