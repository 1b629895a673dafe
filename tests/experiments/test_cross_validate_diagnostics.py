"""cross-validate's diagnostics at toy size: the time-use table and the held-out AUC over training.

Real trainings (a few iterations): the time-use cells are checked against ``evaluate`` (and the
bootstrap intervals against ``compare``) run by hand on the concatenated out-of-fold predictions
of each clip ablation, the training curve against the jobs' own ``metrics.json`` read here line
by line, and a changed diagnostic option against the experiment's fingerprint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers.cohorts import make_toy_cohort
from test_cross_validate import TEMPORAL, cross_validate, tiny

from perforation_d2.cli import main

MODES = ("none", "centre", "reverse", "shuffle")
CURVE = ("--folds", "2", "--seed", "0", "--jobs", "2", "--curve-points", "3")
# A log period longer than the evaluation period (1): metrics.json must still keep every evaluation.
OVERRIDES = [*tiny(), "SOLVER.LOG_PERIOD", "20"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvdiag")
    cohort_json = make_toy_cohort(root / "toy", num_patients=8, frames=4)
    out = root / "exp"
    assert cross_validate(cohort_json, out, *CURVE, overrides=OVERRIDES) == 0
    return cohort_json, out


def _jobs(out: Path, model: str) -> list[Path]:
    return [out / "jobs" / model / "kfold" / f"fold{k}" / "run0" for k in (0, 1)]


def _concatenated(out: Path, model: str, mode: str) -> list[dict]:
    sub = "" if mode == "none" else f"clip_{mode}/"
    return [p for job in _jobs(out, model)
            for p in json.loads(next(job.glob(f"inference/*_val/{sub}predictions.json")).read_text())]


def _evaluate(cohort_json: Path, predictions: list[dict], where: Path) -> dict:
    where.mkdir(parents=True)
    (where / "pred.json").write_text(json.dumps(predictions))
    assert main(["evaluate", "--gt", str(cohort_json), "--pred", str(where / "pred.json"), "--out", str(where / "e")]) == 0
    return json.loads((where / "e" / "metrics.json").read_text())


def test_the_time_use_table_equals_evaluate_on_each_pooled_ablation(experiment, tmp_path):
    cohort_json, out = experiment
    results = json.loads((out / "report" / "results.json").read_text())
    rows = results["time_use"]["models"]
    # Only the temporal model's jobs ran the diagnostic.
    assert all((job / "time_use.json").is_file() for job in _jobs(out, "tconv"))
    assert not any((job / "time_use.json").exists() for job in _jobs(out, "single"))
    tconv = rows["tconv"]
    assert tconv["unchanged_by_construction"] is False and tconv["num_frames"] == 5
    # The "none" entry is the trainer's final evaluation, not a second one: its predictions are the
    # normal ones and its AUC is that final evaluation's.
    for job in _jobs(out, "tconv"):
        none = json.loads((job / "time_use.json").read_text())["ablations"]["none"]
        assert Path(none["predictions"]) == next(job.glob("inference/*_val/predictions.json"))
        assert not list(job.glob("inference/*_val/clip_none"))
        final = json.loads(next(job.glob("inference/*_val/metrics.json")).read_text())
        assert none["AUC"] == pytest.approx(final["AUC"], abs=1e-12)
    by_hand = {}
    for mode in MODES:
        predictions = _concatenated(out, "tconv", mode)
        if mode != "none":
            pooled = out / "report" / f"pooled_predictions_tconv_kfold_run0_clip_{mode}.json"
            assert sorted(map(json.dumps, json.loads(pooled.read_text()))) == sorted(map(json.dumps, predictions))
        by_hand[mode] = _evaluate(cohort_json, predictions, tmp_path / mode)
        for key in ("AUC", "sens_at_95spec"):
            assert tconv["modes"][mode][key]["values"] == [pytest.approx(by_hand[mode][key], abs=1e-12)]
    assert tconv["AUC_drop_centre"]["mean"] == pytest.approx(by_hand["none"]["AUC"] - by_hand["centre"]["AUC"],
                                                             abs=1e-12)
    # The 95% intervals are compare's patient-level bootstrap (2000 resamples, seed 0).
    compare_out = tmp_path / "compare"
    assert main(["compare", "--gt", str(cohort_json), "--pred", str(tmp_path / "none" / "pred.json"),
                 "--pred", str(tmp_path / "centre" / "pred.json"), "--bootstrap", "2000", "--seed", "0",
                 "--out", str(compare_out)]) == 0
    compared = json.loads((compare_out / "compare.json").read_text())["models"]
    for entry, mode in zip(compared, ("none", "centre")):
        assert tconv["modes"][mode]["AUC_ci95"] == [pytest.approx(entry["AUC_ci95"], abs=1e-12)]
    # A single-frame model: its normal figures in every column, no AUC lost.
    single = rows["single"]
    assert single["unchanged_by_construction"] is True
    normal = results["table1"]["single"]["AUC"]["values"]
    assert [single["modes"][m]["AUC"]["values"] for m in MODES] == [normal] * 4
    assert single["AUC_drop_centre"]["mean"] in (0.0, None)
    report = (out / "report" / "report.md").read_text()
    assert "## Time use" in report and "| single (unchanged by construction) | 1 |" in report


def _auc_lines(metrics_json: Path) -> dict[int, float]:
    found = {}
    for line in metrics_json.read_text().splitlines():
        entry = json.loads(line)
        if "dsa/AUC" in entry and math.isfinite(entry["dsa/AUC"]):
            found[entry["iteration"]] = entry["dsa/AUC"]
    return found


def test_the_training_curve_is_the_jobs_metrics_json(experiment):
    _, out = experiment
    curve = json.loads((out / "report" / "training_curve.json").read_text())
    assert set(curve) == {"single", "tconv"}
    for model in ("single", "tconv"):
        lines = curve[model]["lines"]
        assert set(lines) == {"fold0/run0", "fold1/run0"}
        for fold, job in zip(("fold0", "fold1"), _jobs(out, model)):
            logged = _auc_lines(job / "metrics.json")
            # MAX_ITER 3, --curve-points 3: after iterations 1 and 2 (logged as iterations 0 and 1,
            # the step just run) and after the last (logged as 3).
            assert sorted(logged) == [0, 1, 3]
            expected = {"1": logged[0], "2": logged[1], "3": logged[3]}
            assert lines[f"{fold}/run0"] == pytest.approx(expected, abs=0)
        assert curve[model]["mean"] == pytest.approx(
            {i: np.mean([lines[f][i] for f in lines]) for i in ("1", "2", "3")}, abs=1e-12)
        # The final point is the final model's AUC on that fold, as the report's per-fold table has it.
    results = json.loads((out / "report" / "results.json").read_text())
    for fold in ("fold0", "fold1"):
        assert curve["tconv"]["lines"][f"{fold}/run0"]["3"] == pytest.approx(
            results["per_split_auc"][fold]["tconv"]["mean"], abs=1e-9)
    assert (out / "report" / "training_curve.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "report" / "report.md").read_text()
    assert "![held-out AUC over training](training_curve.png)" in report and "never for model selection" in report


def test_a_changed_diagnostic_option_is_refused_and_the_same_one_retrains_nothing(experiment, capsys):
    cohort_json, out = experiment
    finals = sorted(out.glob("jobs/*/kfold/*/*/model_final.pth"))
    stamps = [path.stat().st_mtime_ns for path in finals]
    for args, named in (([*CURVE, "--no-time-use"], "time-use"), ([*CURVE[:-1], "2"], "--curve-points was 3")):
        assert cross_validate(cohort_json, out, *args, overrides=OVERRIDES) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and len(error.strip().splitlines()) == 1
        assert "holds an experiment with other settings" in error and named in error
    assert cross_validate(cohort_json, out, *CURVE, overrides=OVERRIDES) == 0
    assert "4 done" in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in finals] == stamps


def test_no_time_use_runs_no_ablation(tmp_path):
    cohort_json = make_toy_cohort(tmp_path / "toy", num_patients=4, frames=3)
    out = tmp_path / "exp"
    assert cross_validate(cohort_json, out, "--folds", "2", "--jobs", "2", "--no-time-use",
                          configs=(f"tconv={TEMPORAL}",)) == 0
    assert not list(out.glob("jobs/**/clip_*")) and not list(out.glob("jobs/**/time_use.json"))
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["missing"] == [] and "time_use" not in results and "training_curve" not in results
    assert "## Time use" not in (out / "report" / "report.md").read_text()
