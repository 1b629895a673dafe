"""``evaluate --time-use`` / ``compare --time-use``: the clip ablations kept next to the predictions, scored."""

from __future__ import annotations

import json

import pytest
from helpers.metric_cases import random_case

from perforation_d2.cli import main
from perforation_d2.engine.time_use import TIME_USE_FILE, ablation_predictions_path
from perforation_d2.evaluation import compute_series_metrics

MODES = ("centre", "reverse", "shuffle")


def _job(root, name, cohort_predictions, num_frames, ablations):
    """A job's output folder as the trainer's time-use diagnostic leaves it (dataset "held_out")."""
    folder = root / name / "inference" / "held_out"
    folder.mkdir(parents=True)
    (folder / "predictions.json").write_text(json.dumps(cohort_predictions))
    for mode, predictions in ablations.items():
        path = ablation_predictions_path(folder, mode)
        (folder / f"clip_{mode}").mkdir()
        with open(path, "w") as handle:
            json.dump(predictions, handle)
    (root / name / TIME_USE_FILE).write_text(json.dumps({"dataset": "held_out", "num_frames": num_frames}))
    return folder / "predictions.json"


@pytest.fixture
def cohort(tmp_path):
    cohort, predictions = random_case(seed=4, num_series=16, num_frames=5)
    for series in cohort["videos"]:
        series["patient_id"] = f"patient{(series['id'] - 10) // 2}"
    gt = tmp_path / "cohort.json"
    gt.write_text(json.dumps(cohort))
    # Each ablation: the predictions of another random model on the same cohort.
    ablated = {mode: random_case(seed=10 + i, num_series=16, num_frames=5)[1] for i, mode in enumerate(MODES)}
    return cohort, gt, predictions, ablated


def test_evaluate_scores_every_ablation_like_the_predictions_themselves(cohort, tmp_path, capsys):
    cohort, gt, predictions, ablated = cohort
    pred = _job(tmp_path, "temporal", predictions, 5, ablated)
    out = tmp_path / "out"
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(out), "--time-use"]) == 0
    table = json.loads((out / "time_use.json").read_text())
    [row] = table["models"].values()
    assert row["num_frames"] == 5 and not row["unchanged_by_construction"]
    expected = {"none": compute_series_metrics(cohort, predictions),
                **{mode: compute_series_metrics(cohort, ablated[mode]) for mode in MODES}}
    for mode, metrics in expected.items():
        assert row["modes"][mode]["AUC"]["mean"] == pytest.approx(metrics["AUC"]), mode
        assert row["modes"][mode]["sens_at_95spec"]["mean"] == pytest.approx(metrics["sens_at_95spec"]), mode
        low, high = row["modes"][mode]["AUC_ci95"][0]
        assert low <= metrics["AUC"] <= high
    assert row["AUC_drop_centre"]["mean"] == pytest.approx(expected["none"]["AUC"] - expected["centre"]["AUC"])
    printed = capsys.readouterr().out
    assert "AUC centre frame repeated" in printed and "time_use.md" in printed
    assert (out / "time_use.md").read_text().count("\n| ") == 2  # header and one model


def test_compare_shows_a_single_frame_model_as_unchanged(cohort, tmp_path, capsys):
    cohort, gt, predictions, ablated = cohort
    temporal = _job(tmp_path, "temporal", predictions, 5, ablated)
    single_predictions = random_case(seed=20, num_series=16, num_frames=5)[1]
    single = _job(tmp_path, "single", single_predictions, 1, {})
    out = tmp_path / "out"
    assert main(["compare", "--gt", str(gt), "--pred", str(single), "--pred", str(temporal),
                 "--name", "single", "--name", "temporal", "--bootstrap", "50", "--time-use", "--out", str(out)]) == 0
    rows = json.loads((out / "time_use.json").read_text())["models"]
    assert rows["single"]["unchanged_by_construction"]
    auc = compute_series_metrics(cohort, single_predictions)["AUC"]
    assert [rows["single"]["modes"][m]["AUC"]["mean"] for m in ("none", *MODES)] == pytest.approx([auc] * 4)
    assert rows["temporal"]["modes"]["reverse"]["AUC"]["mean"] == pytest.approx(
        compute_series_metrics(cohort, ablated["reverse"])["AUC"])
    assert "single (unchanged by construction)" in capsys.readouterr().out


def test_missing_or_partial_ablations_are_one_clear_error(cohort, tmp_path, capsys):
    cohort, gt, predictions, ablated = cohort
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(predictions))
    out = tmp_path / "out"
    assert main(["evaluate", "--gt", str(gt), "--pred", str(plain), "--out", str(out), "--time-use"]) == 2
    err = capsys.readouterr().err
    assert "no clip-ablation predictions next to" in err and "TEST.DSA.TIME_USE_DIAGNOSTIC True" in err
    partial = _job(tmp_path, "partial", predictions, 5, {"centre": ablated["centre"]})
    assert main(["evaluate", "--gt", str(gt), "--pred", str(partial), "--out", str(out), "--time-use"]) == 2
    err = capsys.readouterr().err
    assert "found the clip ablations centre" in err and "not reverse, shuffle" in err
    assert not out.exists()  # nothing written on refusal


def test_ablations_moved_without_their_job_folder_still_score_with_t_unknown(cohort, tmp_path):
    cohort, gt, predictions, ablated = cohort
    pred = _job(tmp_path, "temporal", predictions, 5, ablated)
    (tmp_path / "temporal" / TIME_USE_FILE).unlink()  # e.g. only inference/<dataset>/ was copied
    out = tmp_path / "out"
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--out", str(out), "--time-use"]) == 0
    [row] = json.loads((out / "time_use.json").read_text())["models"].values()
    assert row["num_frames"] is None and not row["unchanged_by_construction"]
    assert "| predictions.json | ? |" in (out / "time_use.md").read_text()
