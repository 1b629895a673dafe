"""Series-level metrics (SPEC section 4), cross-checked against scikit-learn and pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from helpers.metric_cases import GT, SIZE, make_cohort, pred, quiet_metrics, random_case  # noqa: F401
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import roc_auc_score

from perforation_d2.errors import DSAInputError
from perforation_d2.evaluation import compute_series_metrics
from perforation_d2.evaluation.cohort_index import restrict_cohort
from perforation_d2.evaluation.metrics import METRIC_KEYS, DSAMetricWarning


def test_every_spec_key_is_present_and_json_safe():
    cohort, predictions = random_case()
    metrics = compute_series_metrics(cohort, predictions)
    assert set(metrics) == set(METRIC_KEYS)
    json.dumps(metrics, allow_nan=False)
    assert metrics["num_series"] == 24 and metrics["num_positive_series"] == 12
    assert set(metrics["series_scores"]) == {str(10 + v) for v in range(24)}


def test_auc_equals_scikit_learn_on_series_max_scores():
    cohort, predictions = random_case(seed=1)
    metrics = compute_series_metrics(cohort, predictions, series_optimization=False)
    # Without SO a series score is simply its highest raw score.
    best = {}
    for p in predictions:
        video = p["image_id"] // 100
        best[video] = max(best.get(video, 0.0), p["score"])
    video_ids = [v["id"] for v in cohort["videos"]]
    labels = [1 if (v - 10) % 2 == 0 else 0 for v in video_ids]
    scores = [best.get(v, 0.0) for v in video_ids]
    assert metrics["AUC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["series_scores"] == {str(v): s for v, s in zip(video_ids, scores)}


class CentreCOCOeval(COCOeval):
    """The test's own centre-overlap matching (1.0 / 0.0), written independently of the package."""

    def computeIoU(self, imgId, catId):
        gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gts or not dts:
            return []
        dts = sorted(dts, key=lambda d: -d["score"])[: self.params.maxDets[-1]]

        def centre_in(a, b):
            cx, cy = a[0] + a[2] / 2, a[1] + a[3] / 2
            return b[0] <= cx <= b[0] + b[2] and b[1] <= cy <= b[1] + b[3]

        return np.array([[float(centre_in(d["bbox"], g["bbox"]) or centre_in(g["bbox"], d["bbox"])) for g in gts]
                         for d in dts])


def direct_cocoeval_ap(cohort, predictions, evaluator_class, tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(cohort))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        dt = gt.loadRes(json.loads(json.dumps(predictions)))
        evaluator = evaluator_class(gt, dt, "bbox")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [1]
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, 0, 0, 0]
    return float(np.mean(precision[precision > -1]))


def test_coco_aps_equal_a_direct_cocoeval_run(tmp_path):
    cohort, predictions = random_case(seed=2)
    metrics = compute_series_metrics(cohort, predictions, series_optimization=False)
    # maxDets=1 makes COCOeval keep each frame's top detection itself (stable sort: first on ties).
    assert metrics["AP50_coco"] == pytest.approx(direct_cocoeval_ap(cohort, predictions, COCOeval, tmp_path),
                                                 abs=1e-12)
    assert metrics["AP_center_coco"] == pytest.approx(
        direct_cocoeval_ap(cohort, predictions, CentreCOCOeval, tmp_path), abs=1e-12)
    assert 0 < metrics["AP50_coco"] <= metrics["AP_center_coco"] < 1


def test_youden_point_and_sensitivity_at_95_specificity_by_hand():
    # Single-frame series with one detection each: series score = detection score.
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.6, 0.3, 0.7, 0.2, 0.1]
    cohort = make_cohort([[[GT]] if y else [[]] for y in labels])
    predictions = [pred(v, 0, GT if y else (0, 0, 5, 5), s) for v, (y, s) in enumerate(zip(labels, scores))]
    metrics = compute_series_metrics(cohort, predictions)
    # (threshold: tpr, fpr) = inf: 0,0 | .9: 1/3,0 | .7: 1/3,1/3 | .6: 2/3,1/3 | .3: 1,1/3 | .2: 1,2/3 | .1: 1,1
    assert metrics["threshold"] == 0.3
    assert metrics["sensitivity"] == 1.0
    assert metrics["specificity"] == pytest.approx(2 / 3)
    assert metrics["sens_at_95spec"] == pytest.approx(1 / 3)
    assert metrics["AUC"] == pytest.approx(7 / 9)
    # Kept at 0.3: four detections, the three true ones are hits.
    assert metrics["precision_iou50"] == pytest.approx(3 / 4) and metrics["recall_iou50"] == 1.0


def test_youden_ties_take_the_highest_threshold():
    labels = [1, 1, 0, 0]
    scores = [0.9, 0.5, 0.7, 0.1]  # J = .5 at both 0.9 and 0.5
    cohort = make_cohort([[[GT]] if y else [[]] for y in labels])
    predictions = [pred(v, 0, GT, s) for v, s in enumerate(scores)]
    metrics = compute_series_metrics(cohort, predictions)
    assert (metrics["threshold"], metrics["sensitivity"], metrics["specificity"]) == (0.9, 0.5, 1.0)
    assert metrics["precision_center"] == 1.0 and metrics["recall_center"] == 0.5


def test_box_matching_auprc_by_hand():
    # Four positive single-frame series (one GT box each) and one negative series.
    cohort = make_cohort([[[GT]], [[GT]], [[GT]], [[GT]], [[]]])
    far = (100, 100, 10, 10)
    shifted = (45, 45, 20, 20)  # IoU 225/575 < 0.5 but centres overlap
    # Series 3's box is a false positive; the negative series 4 has no detection.
    predictions = [pred(0, 0, GT, 0.9), pred(3, 0, far, 0.8), pred(1, 0, shifted, 0.8), pred(2, 0, GT, 0.5)]
    metrics = compute_series_metrics(cohort, predictions)
    # Centre criterion, distinct scores .9, .8, .5: P = 1, 2/3, 3/4 and R = 1/4, 2/4, 3/4.
    assert metrics["AUPRC_center"] == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 0.75)
    # Youden: threshold 0.5 keeps all four: IoU hits 2 (exact boxes), centre hits 3.
    assert metrics["threshold"] == 0.5
    assert metrics["precision_iou50"] == pytest.approx(2 / 4) and metrics["recall_iou50"] == pytest.approx(2 / 4)
    assert metrics["precision_center"] == pytest.approx(3 / 4)
    assert metrics["recall_center"] == pytest.approx(3 / 4)


def test_centre_criterion_counts_either_centre_inside_the_other_box():
    cohort = make_cohort([[[GT]], [[GT]], [[]]])
    big = (45, 45, 60, 60)  # its centre (75, 75) is outside GT; GT's centre (50, 50) is inside it
    small = (55, 55, 4, 4)  # its centre (57, 57) is inside GT; GT's centre is outside it
    metrics = compute_series_metrics(cohort, [pred(0, 0, big, 0.8), pred(1, 0, small, 0.8)])
    assert metrics["precision_center"] == 1.0 and metrics["recall_center"] == 1.0
    assert metrics["precision_iou50"] == 0.0 and metrics["AP_center_coco"] == 1.0


def test_top1_ties_keep_the_first_prediction():
    cohort = make_cohort([[[GT]], [[]]])
    miss = (0, 0, 5, 5)
    first_wins = compute_series_metrics(cohort, [pred(0, 0, GT, 0.7), pred(0, 0, miss, 0.7), pred(1, 0, miss, 0.1)])
    other_order = compute_series_metrics(cohort, [pred(0, 0, miss, 0.7), pred(0, 0, GT, 0.7), pred(1, 0, miss, 0.1)])
    assert first_wins["recall_iou50"] == 1.0 and other_order["recall_iou50"] == 0.0


def test_series_optimization_suppresses_an_isolated_false_positive():
    # Positive series: the perforation in frames 0-3 and a strong isolated false positive in frame 5.
    cohort = make_cohort([[[GT]] * 4 + [[], []], [[]] * 6])
    predictions = [pred(0, f, GT, 0.6) for f in range(4)] + [pred(0, 5, (0, 0, 10, 10), 0.95)]
    predictions += [pred(1, 2, (0, 0, 10, 10), 0.2)]
    with_so = compute_series_metrics(cohort, predictions)
    without = compute_series_metrics(cohort, predictions, series_optimization=False)
    assert with_so["series_scores"] == {"10": pytest.approx(0.6), "11": 0.2}
    assert without["series_scores"] == {"10": 0.95, "11": 0.2}
    # Youden thresholds 0.6 and 0.95: with SO four true boxes are kept, without it the false one.
    assert with_so["precision_center"] == 1.0 and with_so["recall_center"] == 1.0
    assert without["precision_center"] == 0.0 and without["recall_center"] == 0.0


def test_perfect_predictions_score_one_everywhere():
    series = [[[GT], [GT], [GT]], [[], [], []], [[(70, 60, 25, 25)]], [[]]]
    cohort = make_cohort(series)
    predictions = [pred(v, f, box, 0.9) for v, frames in enumerate(series) for f, boxes in enumerate(frames)
                   for box in boxes]
    metrics = compute_series_metrics(cohort, predictions)
    for key in ("AUC", "sensitivity", "specificity", "sens_at_95spec", "precision_iou50", "recall_iou50",
                "precision_center", "recall_center", "AUPRC_center", "AP50_coco", "AP_center_coco"):
        assert metrics[key] == pytest.approx(1.0), key


def test_no_detection_gives_recall_zero_without_crashing():
    cohort, _ = random_case()
    with pytest.warns(DSAMetricWarning, match="threshold"):
        metrics = compute_series_metrics(cohort, [])
    assert metrics["AUC"] == 0.5 and metrics["sensitivity"] == 0.0 and metrics["threshold"] is None
    for key in ("recall_iou50", "recall_center", "precision_iou50", "AUPRC_center", "AP50_coco", "AP_center_coco"):
        assert metrics[key] == 0.0, key
    assert set(metrics["series_scores"].values()) == {0.0}


def test_single_class_cohort_gives_nulls_and_a_warning():
    cohort = make_cohort([[[GT]], [[GT]]])
    with pytest.warns(DSAMetricWarning, match="one class"):
        metrics = compute_series_metrics(cohort, [pred(0, 0, GT, 0.8)])
    for key in ("AUC", "threshold", "sensitivity", "specificity", "sens_at_95spec", "precision_iou50",
                "recall_center"):
        assert metrics[key] is None, key
    # Threshold-free: one of two boxes found, precision 1 at the 51 recall thresholds 0 .. 0.5.
    assert metrics["AP50_coco"] == pytest.approx(51 / 101)
    json.dumps(metrics, allow_nan=False)


def test_labels_without_boxes_give_null_box_metrics():
    cohort = make_cohort([[[]], [[]]], labels=[1, 0])
    with pytest.warns(DSAMetricWarning, match="no ground-truth box"):
        metrics = compute_series_metrics(cohort, [pred(0, 0, GT, 0.8)])
    assert metrics["AUC"] == 1.0
    assert metrics["recall_iou50"] is None and metrics["AUPRC_center"] is None and metrics["AP50_coco"] is None
    assert metrics["precision_center"] == 0.0


def test_restrict_cohort_keeps_only_the_given_series():
    cohort, predictions = random_case(num_series=6)
    subset = restrict_cohort(cohort, [10, 11, 13])
    assert [v["id"] for v in subset["videos"]] == [10, 11, 13]
    assert {img["video_id"] for img in subset["images"]} == {10, 11, 13}
    assert {ann["image_id"] // 100 for ann in subset["annotations"]} <= {10, 11, 13}
    kept = [p for p in predictions if p["image_id"] // 100 in (10, 11, 13)]
    assert quiet_metrics(subset, kept)["num_series"] == 3
    with pytest.raises(DSAInputError, match="unknown image_id"):
        compute_series_metrics(subset, predictions)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_id": 99999}, "unknown image_id 99999"),
        ({"image_id": True}, "not an integer"),
        ({"score": float("nan")}, "not a probability"),
        ({"score": -0.1}, "not a probability"),
        ({"score": 1.5}, "not a probability"),
        ({"score": "0.5"}, "not a number"),
        ({"bbox": [1, 2, 0, 4]}, "non-positive"),
        ({"bbox": [1, 2, 3, -4]}, "non-positive"),
        ({"bbox": [1, 2, 3]}, "not four numbers"),
        ({"bbox": [1, 2, float("inf"), 3]}, "not finite"),
        ({"category_id": 2}, "category_id 2"),
    ],
)
def test_bad_predictions_are_refused_with_the_entry_named(change, message):
    cohort = make_cohort([[[GT]], [[]]])
    bad = {**pred(0, 0, GT, 0.5), **change}
    with pytest.raises(DSAInputError, match=message) as error:
        compute_series_metrics(cohort, [pred(1, 0, GT, 0.2), bad])
    assert "entry 1" in str(error.value) and str(error.value).startswith("predictions:")


def test_missing_keys_and_non_list_input_are_refused():
    cohort = make_cohort([[[GT]], [[]]])
    with pytest.raises(DSAInputError, match="score None is not a number"):
        compute_series_metrics(cohort, [{"image_id": 1000, "category_id": 1, "bbox": list(GT)}])
    with pytest.raises(DSAInputError, match="must be a JSON list"):
        compute_series_metrics(cohort, {"image_id": 1000})
    with pytest.raises(DSAInputError, match="not an object"):
        compute_series_metrics(cohort, [[1000, 1, list(GT), 0.5]])


def test_numpy_scalars_are_accepted():
    cohort = make_cohort([[[GT]], [[]]])
    predictions = [{"image_id": np.int64(1000), "category_id": 1, "bbox": [np.float32(40), 40, 20, 20],
                    "score": np.float32(0.5)}]
    metrics = compute_series_metrics(cohort, predictions)
    assert metrics["AUC"] == 1.0 and math.isclose(metrics["series_scores"]["10"], 0.5)
