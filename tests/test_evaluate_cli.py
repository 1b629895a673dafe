"""The ``evaluate`` and ``compare`` commands end to end on small cohorts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_metrics import GT, make_cohort, pred, random_case

from perforation_d2.cli import main
from perforation_d2.evaluation import compute_series_metrics, delong_test
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
        (b'[{"image_id": 1000, "category_id": 1, "bbox": [1, 2, 3, 4], "score": NaN}]', "not a probability"),
        (json.dumps([pred(0, 0, GT, -0.2)]).encode(), "not a probability"),
        (json.dumps([pred(0, 0, (1, 2, 0, 4), 0.2)]).encode(), "non-positive"),
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
