"""The ``evaluate`` and ``compare`` commands end to end on small cohorts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.metric_cases import GT, make_cohort, pred, random_case

from perforation_d2.cli import main
from perforation_d2.commands import benchmark
from perforation_d2.commands import evaluate as evaluate_cmd
from perforation_d2.evaluation import compute_series_metrics, delong_test
from perforation_d2.evaluation.cohort_index import restrict_cohort
from perforation_d2.evaluation.metrics import METRIC_KEYS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def case(tmp_path):
    cohort, predictions = random_case(seed=4, num_series=16, num_frames=5)
    for series in cohort["videos"]:  # two series per patient
        series["patient_id"] = f"patient{(series['id'] - 10) // 2}"
    gt = tmp_path / "cohort.json"
    gt.write_text(json.dumps(cohort))
    pred_file = tmp_path / "model_a.json"
    pred_file.write_text(json.dumps(predictions))
    return cohort, predictions, gt, pred_file


def evaluate(gt, pred_file, out, *extra):
    return main(["evaluate", "--gt", str(gt), "--pred", str(pred_file), "--out", str(out), *extra])


def test_evaluate_writes_metrics_and_plots(case, tmp_path, capsys):
    cohort, predictions, gt, pred_file = case
    out = tmp_path / "out"
    assert evaluate(gt, pred_file, out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(METRIC_KEYS)
    assert metrics == json.loads(json.dumps(compute_series_metrics(cohort, predictions)))
    for plot in ("roc.png", "pr.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "AUC" in printed and "series optimisation: on" in printed

    # Outputs are not replaced without --overwrite; the flag switches SO off.
    assert evaluate(gt, pred_file, out, "--no-series-optimization") == 2
    assert "already exists" in capsys.readouterr().err
    assert evaluate(gt, pred_file, out, "--no-series-optimization", "--overwrite") == 0
    without_so = json.loads((out / "metrics.json").read_text())
    assert without_so == json.loads(json.dumps(compute_series_metrics(cohort, predictions, False)))
    assert without_so != metrics


def test_an_empty_list_evaluates_to_recall_zero(case, tmp_path, capsys):
    _, _, gt, _ = case
    empty_list = tmp_path / "none.json"
    empty_list.write_text("[]")
    assert evaluate(gt, empty_list, tmp_path / "out") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["recall_iou50"] == 0.0 and metrics["recall_center"] == 0.0 and metrics["threshold"] is None
    assert "warning:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty (0 bytes)"),
        (b"  \n", "is empty"),
        (b"[{", "not valid JSON"),
        (b'{"image_id": 1000}', "found a dict"),
        (json.dumps([pred(0, 0, GT, 0.5), pred(40, 0, GT, 0.5)]).encode(), "unknown image_id 5000"),
        # NaN is not JSON: the one JSON reader refuses it before the schema check.
        (b'[{"image_id": 1000, "category_id": 1, "bbox": [1, 2, 3, 4], "score": NaN}]', "holds NaN"),
        (json.dumps([pred(0, 0, GT, -0.2)]).encode(), "not a probability"),
        (json.dumps([pred(0, 0, (1, 2, 0, 4), 0.2)]).encode(), "non-positive"),
        (b"[" * 100_000, "nested too deeply"),
        (json.dumps([{**pred(0, 0, GT, 0.5), "bbox": [40, 40, 20, 20] * 2}]).encode(), "is not four numbers"),
        (json.dumps([{**pred(0, 0, GT, 0.5), "bbox": [[40, 40], [20, 20]]}]).encode(), "is not four numbers"),
    ],
)
def test_bad_predictions_files_fail_with_one_clear_message(case, tmp_path, capsys, content, message):
    _, _, gt, _ = case
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    assert evaluate(gt, bad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}") and message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_missing_predictions_file_and_single_class_cohort(case, tmp_path, capsys):
    _, _, gt, pred_file = case
    assert evaluate(gt, tmp_path / "missing.json", tmp_path / "out") == 2
    assert "not found" in capsys.readouterr().err
    one_class = tmp_path / "positive_only.json"
    one_class.write_text(json.dumps(make_cohort([[[GT]], [[GT]]])))
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([pred(0, 0, GT, 0.9)]))
    assert evaluate(one_class, preds, tmp_path / "one") == 0
    assert "one class" in capsys.readouterr().err
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["AUC"] is None


def test_compare_two_models_and_their_median_ensemble(case, tmp_path, capsys):
    cohort, predictions, gt, pred_a = case
    rng = np.random.default_rng(5)
    noisy = [{**p, "score": float(np.clip(p["score"] + rng.normal(0, 0.2), 0, 1))} for p in predictions]
    pred_b = tmp_path / "model_b.json"
    pred_b.write_text(json.dumps(noisy))
    out = tmp_path / "cmp"
    args = ["compare", "--gt", str(gt), "--pred", str(pred_a), "--pred", str(pred_b), "--name", "A", "--name", "B",
            "--out", str(out), "--bootstrap", "200", "--seed", "1"]
    assert main(args) == 0
    report = json.loads((out / "compare.json").read_text())
    assert [m["name"] for m in report["models"]] == ["A", "B"]
    metrics_a = compute_series_metrics(cohort, predictions)
    metrics_b = compute_series_metrics(cohort, noisy)
    model_a = report["models"][0]
    assert model_a["AUC"] == pytest.approx(metrics_a["AUC"])
    assert model_a["precision_center"] == metrics_a["precision_center"]
    assert model_a["AUC_ci95"][0] <= model_a["AUC"] <= model_a["AUC_ci95"][1]
    assert model_a["bootstrap_resamples_used"] + model_a["bootstrap_resamples_single_class"] == 200

    scores_a = [metrics_a["series_scores"][k] for k in sorted(metrics_a["series_scores"])]
    scores_b = [metrics_b["series_scores"][k] for k in sorted(metrics_a["series_scores"])]
    ensemble = report["ensemble"]
    assert [ensemble["series_scores"][k] for k in sorted(metrics_a["series_scores"])] == pytest.approx(
        np.median([scores_a, scores_b], axis=0))
    labels = [1 if (int(k) - 10) % 2 == 0 else 0 for k in sorted(metrics_a["series_scores"])]
    assert [(t["a"], t["b"]) for t in report["delong"]] == [("A", "B"), ("A", "Ensemble (median)"),
                                                            ("B", "Ensemble (median)")]
    expected = delong_test(labels, scores_a, scores_b)
    for key, value in expected.items():
        assert report["delong"][0][key] == pytest.approx(value)

    table = (out / "table.md").read_text()
    assert "| Method | AUC (95% CI) | Sens | Spec | mSens95 | AP50 | AR50 | AP_cin | AR_cin | AUPRC |" in table
    assert "| Ensemble (median) |" in table and "| A vs B |" in table
    assert (out / "roc_overlay.png").read_bytes()[:8] == PNG_MAGIC
    assert "DeLong" in capsys.readouterr().out

    # Same seed, same intervals; outputs are protected without --overwrite.
    assert main(args) == 2
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((out / "compare.json").read_text()) == report


def test_compare_refuses_what_it_cannot_compare(case, tmp_path, capsys):
    _, _, gt, pred_a = case
    out = str(tmp_path / "cmp")
    assert main(["compare", "--gt", str(gt), "--pred", str(pred_a), "--out", out]) == 2
    assert "at least two --pred" in capsys.readouterr().err
    assert main(["compare", "--gt", str(gt), "--pred", str(pred_a), "--pred", str(pred_a), "--name", "A",
                 "--out", out]) == 2
    assert "one name per file" in capsys.readouterr().err
    assert main(["compare", "--gt", str(gt), "--pred", str(pred_a), "--pred", str(pred_a), "--out", out]) == 2
    assert "unique" in capsys.readouterr().err
    negative_only = tmp_path / "negative_only.json"
    negative_only.write_text(json.dumps(make_cohort([[[]], [[]], [[]]])))
    preds = tmp_path / "p.json"
    preds.write_text("[]")
    assert main(["compare", "--gt", str(negative_only), "--pred", str(preds), "--pred", str(pred_a),
                 "--name", "x", "--name", "y", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {negative_only}") and "0 positive" in err


# ---- one fold of a cross-validation: --splits / --fold / --loco / --part ----------------------


@pytest.fixture
def fold_case(case, tmp_path):
    """Two folds of 8 series each (4 positive each); predictions of fold 0's validation run only."""
    cohort, predictions, gt, _ = case
    video_ids = [video["id"] for video in cohort["videos"]]
    folds = [video_ids[:8], video_ids[8:]]
    splits = {"folds": [{"fold": k, "train_video_ids": folds[1 - k], "val_video_ids": folds[k]} for k in (0, 1)],
              "loco": [{"heldout": "siteA", "train_video_ids": folds[1], "val_video_ids": folds[0]}]}
    splits_file = tmp_path / "splits.json"
    splits_file.write_text(json.dumps(splits))
    val_images = {image["id"] for image in restrict_cohort(cohort, folds[0])["images"]}
    fold_predictions = [p for p in predictions if p["image_id"] in val_images]
    fold_pred_file = tmp_path / "fold0_val.json"
    fold_pred_file.write_text(json.dumps(fold_predictions))
    return cohort, predictions, gt, splits_file, folds, fold_predictions, fold_pred_file


def test_fold_predictions_without_splits_warn_that_other_series_score_zero(fold_case, tmp_path, capsys):
    _, _, gt, _, _, _, fold_pred_file = fold_case
    assert evaluate(gt, fold_pred_file, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "8 of 16 series have no prediction on any frame" in err and "--splits SPLITS.json --fold K" in err


def test_evaluate_one_fold_scores_only_its_series(fold_case, tmp_path, capsys):
    cohort, predictions, gt, splits_file, folds, fold_predictions, fold_pred_file = fold_case
    expected = json.loads(json.dumps(compute_series_metrics(restrict_cohort(cohort, folds[0]), fold_predictions)))
    assert evaluate(gt, fold_pred_file, tmp_path / "a", "--splits", str(splits_file), "--fold", "0") == 0
    captured = capsys.readouterr()
    assert "no prediction" not in captured.err and "fold 0, val series" in captured.out
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics == expected and metrics["num_series"] == 8
    assert metrics != json.loads(json.dumps(compute_series_metrics(cohort, fold_predictions)))

    # Predictions on every series: those outside the fold are ignored (and said so).
    full = tmp_path / "full.json"
    full.write_text(json.dumps(predictions))
    assert evaluate(gt, full, tmp_path / "b", "--splits", str(splits_file), "--fold", "0") == 0
    assert "ignored" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "metrics.json").read_text()) == expected
    assert evaluate(gt, full, tmp_path / "c", "--splits", str(splits_file), "--loco", "siteA") == 0
    assert json.loads((tmp_path / "c" / "metrics.json").read_text()) == expected
    assert evaluate(gt, full, tmp_path / "d", "--splits", str(splits_file), "--fold", "0", "--part", "train") == 0
    train_metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert sorted(int(v) for v in train_metrics["series_scores"]) == folds[1]


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, ["--fold", "5"], "has no fold 5 (available: 0, 1)"),
        (None, ["--loco", "siteB"], "has no held-out cohort siteB (available: siteA)"),
        (None, [], "--fold K or --loco HELDOUT"),
        ("[1, 2]", ["--fold", "0"], "not a splits file"),
        ("{", ["--fold", "0"], "cannot read the splits file"),
        ('{"folds": [{"fold": 0, "train_video_ids": [], "val_video_ids": [10, 999]}]}', ["--fold", "0"], "video ids [999]"),
        ('{"folds": [{"fold": 0, "val_video_ids": "all"}]}', ["--fold", "0"], "'val_video_ids'"),
    ],
)
def test_bad_splits_or_fold_fail_naming_the_splits_file(fold_case, tmp_path, capsys, content, extra, message):
    _, _, gt, splits_file, _, _, fold_pred_file = fold_case
    if content is not None:
        splits_file.write_text(content)
    assert evaluate(gt, fold_pred_file, tmp_path / "out", "--splits", str(splits_file), *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {splits_file}") and message in err
    assert not (tmp_path / "out").exists()


def test_fold_without_splits_and_missing_splits_file(fold_case, tmp_path, capsys):
    _, _, gt, _, _, _, fold_pred_file = fold_case
    assert evaluate(gt, fold_pred_file, tmp_path / "out", "--fold", "0") == 2
    assert "pass --splits" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert evaluate(gt, fold_pred_file, tmp_path / "out", "--splits", str(missing), "--fold", "0") == 2
    assert capsys.readouterr().err.startswith(f"error: {missing}: splits file not found")


def test_compare_one_fold(fold_case, tmp_path, capsys):
    cohort, _, gt, splits_file, folds, fold_predictions, fold_pred_file = fold_case
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**p, "score": round(p["score"] / 2, 3)} for p in fold_predictions]))
    args = ["compare", "--gt", str(gt), "--pred", str(fold_pred_file), "--pred", str(other), "--out",
            str(tmp_path / "cmp"), "--bootstrap", "20", "--splits", str(splits_file), "--fold", "0"]
    assert main(args) == 0
    assert "no prediction" not in capsys.readouterr().err
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["num_series"] == 8 and report["split"]["selection"] == "fold 0, val series"
    expected = compute_series_metrics(restrict_cohort(cohort, folds[0]), fold_predictions)
    assert report["models"][0]["AUC"] == pytest.approx(expected["AUC"])
    assert "fold 0, val series" in (tmp_path / "cmp" / "table.md").read_text()


# ---- outputs are written as one set ----------------------------------------------------------


def test_a_failure_while_rendering_leaves_no_partial_outputs(case, tmp_path, monkeypatch, capsys):
    _, _, gt, pred_file = case

    def failing_plots(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(evaluate_cmd, "evaluation_plot_pngs", failing_plots)
    with pytest.raises(RuntimeError, match="plotting failed"):
        evaluate(gt, pred_file, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_benchmark_refuses_an_existing_table_before_running_any_section(tmp_path, monkeypatch, capsys):
    table = tmp_path / "BENCHMARKS.md"
    table.write_text("kept")

    def section_must_not_run(args):
        raise AssertionError("a section ran before the output check")

    monkeypatch.setattr(benchmark, "SECTIONS", {"data": section_must_not_run})
    assert main(["benchmark", "--sections", "data", "--write", str(table)]) == 2
    assert "already exists" in capsys.readouterr().err and table.read_text() == "kept"


# ---- every argument is checked before any work -----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seed", "-1"], "argument --seed: must be between 0 and 4294967295, got -1"),
        (["--seed", str(2**32)], "must be between 0 and 4294967295"),
        (["--seed", "1.5"], "expected a seed"),
        (["--bootstrap", "100000000"], "argument --bootstrap: must be between 0 and 100000, got 100000000"),
        (["--bootstrap", "-1"], "must be between 0 and 100000"),
    ],
)
def test_compare_refuses_bad_seed_and_bootstrap_before_reading_anything(tmp_path, capsys, extra, message):
    out = tmp_path / "cmp"
    # Neither the cohort nor the predictions exist: the arguments are refused before they are looked for.
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--gt", str(tmp_path / "missing.json"), "--pred", "a.json", "--pred", "b.json",
              "--out", str(out), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_evaluate_and_compare_refuse_an_out_that_is_a_file(case, tmp_path, capsys):
    _, _, gt, pred_file = case
    taken = tmp_path / "taken"
    taken.write_text("the user's file")
    assert evaluate(gt, pred_file, taken) == 2
    assert capsys.readouterr().err.startswith(f"error: {taken}")
    assert main(["compare", "--gt", str(gt), "--pred", str(pred_file), "--pred", str(pred_file), "--name", "a",
                 "--name", "b", "--out", str(taken)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {taken}")
    assert taken.read_text() == "the user's file"


def test_compare_without_series_optimization_scores_raw_maxima(case, tmp_path):
    from sklearn.metrics import roc_auc_score

    cohort, predictions, gt, pred_a = case
    pred_b = tmp_path / "model_b.json"
    pred_b.write_text(json.dumps([{**p, "score": p["score"] / 2} for p in predictions]))
    out = tmp_path / "cmp"
    assert main(["compare", "--gt", str(gt), "--pred", str(pred_a), "--pred", str(pred_b), "--out", str(out),
                 "--bootstrap", "0", "--no-series-optimization"]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["series_optimization"] is False
    # Without SO a series scores its highest raw score (0 without any).
    best: dict[int, float] = {}
    for p in predictions:
        best[p["image_id"] // 100] = max(best.get(p["image_id"] // 100, 0.0), p["score"])
    video_ids = [video["id"] for video in cohort["videos"]]
    assert report["models"][0]["series_scores"] == {str(v): best.get(v, 0.0) for v in video_ids}
    labels = [1 if (v - 10) % 2 == 0 else 0 for v in video_ids]
    assert report["models"][0]["AUC"] == pytest.approx(roc_auc_score(labels, [best.get(v, 0.0) for v in video_ids]))
