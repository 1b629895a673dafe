"""cross-validate at toy size: real trainings (a few iterations), local and submitit executors.

The pooled metrics are checked against ``evaluate`` run on the concatenated out-of-fold
predictions, the mean +- std against numpy on the per-run values, and the ensemble against
``compare``; a second invocation retrains nothing; a job killed with SIGKILL is resumed by the
next invocation and ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cohorts import make_toy_cohort
from helpers.training import REPO, state_dicts_equal

from perforation_d2.cli import main

SINGLE = str(REPO / "configs" / "quick" / "retinanet.yaml")
TEMPORAL = str(REPO / "configs" / "quick" / "retinanet_tconv_T5.yaml")


def tiny(max_iter: int = 3, checkpoint_period: int = 1000) -> list[str]:
    return ["INPUT.FRAME_SIZE", "32", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", str(max_iter), "SOLVER.WARMUP_ITERS", "1", "SOLVER.LOG_PERIOD", "1",
            "SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period), "TEST.EVAL_PERIOD", "0"]


def cross_validate(cohort_json: Path, out: Path, *extra: str, configs=(f"single={SINGLE}", f"tconv={TEMPORAL}"),
                   overrides=None) -> int:
    argv = ["cross-validate", "--cohort", str(cohort_json), "--out", str(out)]
    for config in configs:
        argv += ["--config", config]
    return main([*argv, *extra, *(tiny() if overrides is None else overrides)])


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    cohort_json = make_toy_cohort(root / "toy", num_patients=8, frames=4)
    out = root / "exp"
    assert cross_validate(cohort_json, out, "--folds", "2", "--seed", "0", "--runs", "2", "--jobs", "2") == 0
    return cohort_json, out


def test_every_job_trains_and_the_report_pools_out_of_fold_predictions(experiment, tmp_path):
    cohort_json, out = experiment
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["missing"] == []
    assert set(results["table1"]) == {"single", "tconv"}  # one temporal model: no ensemble of one
    cohort = json.loads(cohort_json.read_text())
    for model in ("single", "tconv"):
        aucs = []
        for run in (0, 1):
            jobs = [out / "jobs" / model / "kfold" / f"fold{k}" / f"run{run}" for k in (0, 1)]
            predictions = [p for job in jobs
                           for p in json.loads(next(job.glob("inference/*_val/predictions.json")).read_text())]
            pooled = out / "report" / f"pooled_predictions_{model}_kfold_run{run}.json"
            assert sorted(map(json.dumps, json.loads(pooled.read_text()))) == sorted(map(json.dumps, predictions))
            # `evaluate` by hand on the concatenated out-of-fold predictions, every series of the cohort.
            by_hand = tmp_path / f"{model}{run}.json"
            by_hand.write_text(json.dumps(predictions))
            assert main(["evaluate", "--gt", str(cohort_json), "--pred", str(by_hand),
                         "--out", str(tmp_path / f"eval_{model}{run}")]) == 0
            metrics = json.loads((tmp_path / f"eval_{model}{run}" / "metrics.json").read_text())
            assert metrics["num_series"] == len(cohort["videos"])
            assert results["table1"][model]["AUC"]["values"][run] == pytest.approx(metrics["AUC"], abs=1e-12)
            assert results["table1"][model]["sens_at_95spec"]["values"][run] == pytest.approx(
                metrics["sens_at_95spec"], abs=1e-12)
            aucs.append(metrics["AUC"])
        cell = results["table1"][model]["AUC"]
        assert cell["mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
        assert cell["std"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)
    assert {(t["a"], t["b"]) for t in results["delong"]} == {("single", "tconv")}
    assert (out / "report" / "report.md").read_text().startswith("# Cross-validation report")
    for png in ("roc_overlay.png", "pr_overlay.png"):
        assert (out / "report" / png).read_bytes().startswith(b"\x89PNG")


def test_the_ensemble_equals_compares(experiment, tmp_path):
    cohort_json, shared = experiment
    # A copy: the report written here with --ensemble must not replace the one the other tests
    # of this module read (they may run before or after this one).
    out = tmp_path / "exp"
    shutil.copytree(shared, out)
    assert cross_validate(cohort_json, out, "--folds", "2", "--seed", "0", "--runs", "2",
                          "--ensemble", "single", "--ensemble", "tconv") == 0
    results = json.loads((out / "report" / "results.json").read_text())
    ensemble = results["table1"]["Ensemble (median)"]
    assert ensemble["members"] == ["single", "tconv"]
    for run in (0, 1):
        pooled = [str(out / "report" / f"pooled_predictions_{m}_kfold_run{run}.json") for m in ("single", "tconv")]
        compare_out = tmp_path / f"compare{run}"
        assert main(["compare", "--gt", str(cohort_json), "--pred", pooled[0], "--pred", pooled[1],
                     "--name", "single", "--name", "tconv", "--bootstrap", "0", "--out", str(compare_out)]) == 0
        compared = json.loads((compare_out / "compare.json").read_text())
        assert ensemble["AUC"]["values"][run] == pytest.approx(compared["ensemble"]["AUC"], abs=1e-12)


def test_a_second_invocation_retrains_nothing(experiment, capsys):
    cohort_json, out = experiment
    finals = sorted(out.glob("jobs/*/kfold/*/*/model_final.pth"))
    assert len(finals) == 8
    stamps = [path.stat().st_mtime_ns for path in finals]
    assert cross_validate(cohort_json, out, "--folds", "2", "--seed", "0", "--runs", "2", "--jobs", "2") == 0
    assert [path.stat().st_mtime_ns for path in finals] == stamps
    assert "8 done" in capsys.readouterr().out


def test_status_lists_jobs_without_running_any(experiment, capsys):
    cohort_json, out = experiment
    assert cross_validate(cohort_json, out, "--folds", "2", "--seed", "0", "--runs", "3", "--status") == 0
    printed = capsys.readouterr().out
    assert "single/kfold/fold0/run2  pending" in printed and "8 done, 4 pending" in printed
    assert not (out / "jobs" / "single" / "kfold" / "fold0" / "run2").exists()


def test_a_changed_override_for_an_existing_experiment_is_refused(experiment, capsys):
    cohort_json, out = experiment
    assert cross_validate(cohort_json, out, "--folds", "2", "--seed", "0", "--runs", "2",
                          overrides=[*tiny(), "SOLVER.BASE_LR", "0.1"]) == 2
    error = capsys.readouterr().err
    assert "holds an experiment with other settings" in error and "overrides" in error


def _job_dirs(out: Path) -> list[Path]:
    return sorted(out.glob("jobs/single/kfold/fold*/run0"))


def test_a_job_killed_mid_training_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    cohort_json = make_toy_cohort(tmp_path / "toy", num_patients=4, frames=3)
    overrides = tiny(max_iter=8, checkpoint_period=2)
    args = ["cross-validate", "--cohort", str(cohort_json), "--folds", "2", "--config", f"single={SINGLE}",
            "--jobs", "1"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "perforation_d2", *args, "--out", str(killed), *overrides],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, "cross-validate ended before it could be killed"
            checkpoints = [d for d in _job_dirs(killed) if (d / "model_0000003.pth").exists()]
            if checkpoints:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint within 300 s")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    interrupted = checkpoints[0]
    assert not (interrupted / "model_final.pth").exists()
    assert main([*args, "--status", "--out", str(killed), *overrides]) == 0
    assert main([*args, "--out", str(killed), *overrides]) == 0
    log = (interrupted / "log.txt").read_text()
    assert "Starting training from iteration" in log.splitlines()[-1] or "from iteration" in log
    reference = tmp_path / "reference"
    assert main([*args, "--out", str(reference), *overrides]) == 0
    for resumed, uninterrupted in zip(_job_dirs(killed), _job_dirs(reference)):
        final = torch.load(resumed / "model_final.pth", weights_only=True)["model"]
        expected = torch.load(uninterrupted / "model_final.pth", weights_only=True)["model"]
        assert state_dicts_equal(final, expected) == [], resumed


def test_submitit_local_executor_runs_the_same_jobs(tmp_path):
    cohort_json = make_toy_cohort(tmp_path / "toy", num_patients=4, frames=3)
    out = tmp_path / "exp"
    assert cross_validate(cohort_json, out, "--folds", "2", "--executor", "submitit-local",
                          configs=(f"single={SINGLE}",)) == 0
    results = json.loads((out / "report" / "results.json").read_text())
    assert results["missing"] == [] and results["table1"]["single"]["AUC"]["n"] == 1
    assert any((out / "submitit").iterdir())  # submitit's own job folders


def test_loco_and_train_fraction_make_their_tables(tmp_path):
    cohort_json = make_toy_cohort(tmp_path / "toy", num_patients=8, frames=3, cohorts=("siteA", "siteB"),
                                  positive_patients=(0, 1, 2, 3))
    out = tmp_path / "exp"
    assert cross_validate(cohort_json, out, "--loco", "--train-fraction", "0.5", "--train-fraction", "1",
                          "--jobs", "2", configs=(f"single={SINGLE}",)) == 0
    results = json.loads((out / "report" / "results.json").read_text())
    assert set(results["table4"]) == {"loco_siteA", "loco_siteB"}
    assert set(results["learning_curve"]["single"]) == {"0.5", "1"}
    half = json.loads((out / "splits" / "loco_frac0.5.json").read_text())["loco"]
    full = json.loads((out / "splits" / "loco.json").read_text())["loco"]
    for small, whole in zip(half, full):
        assert small["val_video_ids"] == whole["val_video_ids"]  # test side unchanged
        assert set(small["train_video_ids"]) < set(whole["train_video_ids"])
    assert (out / "report" / "learning_curve.png").read_bytes().startswith(b"\x89PNG")
    assert "## Table 4" in (out / "report" / "report.md").read_text()


@pytest.mark.parametrize("case", ["splits_mismatch", "config_does_not_build", "single_class_fold", "no_slurm",
                                  "foreign_folder"])
def test_bad_input_is_one_paragraph_before_any_job(tmp_path, capsys, case):
    cohort_json = make_toy_cohort(tmp_path / "toy", num_patients=4, frames=3)
    out = tmp_path / "exp"
    extra = ["--folds", "2"]
    configs = (f"single={SINGLE}",)
    if case == "splits_mismatch":
        other = make_toy_cohort(tmp_path / "other", num_patients=6, frames=3)
        assert main(["split", "--cohort", str(other), "--folds", "2", "--seed", "0", "--out", str(tmp_path / "sp")]) == 0
        extra = ["--splits", str(tmp_path / "sp" / "splits.json")]
    elif case == "config_does_not_build":
        broken = tmp_path / "broken.yaml"
        broken.write_text(f'_BASE_: "{SINGLE}"\nMODEL:\n  TEMPORAL:\n    MODULE: "NoSuchModule"\n    NUM_FRAMES: 5\n')
        configs = (f"broken={broken}",)
    elif case == "single_class_fold":
        cohort_json = make_toy_cohort(tmp_path / "onepos", num_patients=4, frames=3, positive_patients=[0])
    elif case == "no_slurm":
        extra += ["--executor", "slurm"]
    else:
        out.mkdir()
        (out / "mine.txt").write_text("user data")
    code = cross_validate(cohort_json, out, *extra, configs=configs)
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: ") and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    assert not (out / "jobs").exists()
    if case == "foreign_folder":
        assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and "holds no experiment" in error
