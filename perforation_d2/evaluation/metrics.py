"""Series-level metrics (the keys of ``metrics.json``, paper section 4.2), as pure functions.

``compute_series_metrics(cohort, predictions)`` takes the raw COCO-video cohort dict and a COCO
results list and returns every metric key. The series decisions come from the one pipeline of
:mod:`.predictions` (schema check, top-1 per frame, series optimisation, series scores); then ROC
statistics against the series labels (:mod:`.roc`), box-level precision / recall at the Youden
threshold and the step-wise centre-criterion PR area (:mod:`.matching`), and pycocotools' AP at
IoU 0.5 and with the centre-overlap criterion (:mod:`.coco`).

Decisions the specification leaves open, fixed here:

- Scores are probabilities: a score that is NaN, infinite, negative or above 1 is an error.
- Undefined values are ``None`` and a :class:`DSAMetricWarning` is issued: ROC values when the
  cohort has a single class; box-level recall, ``AUPRC_center`` and the COCO APs when it has no
  ground-truth box. A Youden point at the trivial "everything negative" end of the ROC (threshold
  +inf, when no threshold beats chance) keeps its sensitivity/specificity, reports
  ``threshold: None`` (JSON has no infinity) and keeps no detection for precision/recall.
- ``series_scores`` is keyed by ``str(video_id)``, as it appears in ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .coco import CentreOverlapCOCOeval, coco_ap50
from .cohort_index import CATEGORY_ID, CohortIndex
from .matching import match_detections, precision_recall_curve_stepwise, stepwise_auprc
from .predictions import decide_series, parse_predictions
from .roc import roc_statistics

METRIC_KEYS = (
    "AUC",
    "threshold",
    "sensitivity",
    "specificity",
    "sens_at_95spec",
    "precision_iou50",
    "recall_iou50",
    "precision_center",
    "recall_center",
    "AUPRC_center",
    "AP50_coco",
    "AP_center_coco",
    "num_series",
    "num_positive_series",
    "series_scores",
)


class DSAMetricWarning(UserWarning):
    """A metric is undefined for this cohort or these predictions and was reported as None."""


def _warn(message: str) -> None:
    warnings.warn(message, DSAMetricWarning, stacklevel=3)


@dataclass
class SeriesEvaluation:
    """The metrics plus what the plots and the statistics need."""

    metrics: dict[str, Any]
    labels: np.ndarray  # per series, cohort order
    scores: np.ndarray  # series scores, cohort order
    video_ids: list[int]
    patient_ids: list[str]
    roc_fpr: np.ndarray | None = None
    roc_tpr: np.ndarray | None = None
    pr_precision: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pr_recall: np.ndarray = field(default_factory=lambda: np.zeros(0))


def evaluate_series(
    cohort: Mapping[str, Any] | CohortIndex,
    predictions: Any,
    series_optimization: bool = True,
    source: str = "predictions",
) -> SeriesEvaluation:
    """Everything :func:`compute_series_metrics` computes, plus the curves behind it."""
    index = cohort if isinstance(cohort, CohortIndex) else CohortIndex(cohort)
    decided = decide_series(parse_predictions(predictions, index, source), index, series_optimization)
    detections, scores = decided.detections, decided.scores
    labels = index.labels
    point = roc_statistics(labels, scores)
    if point.auc is None:
        _warn(
            f"{source}: the cohort has {len(labels)} series, {int(labels.sum())} of them positive; with only "
            "one class AUC, threshold, sensitivity, specificity and sens_at_95spec are undefined (null)."
        )

    tp_iou, tp_centre = match_detections(detections, index)
    num_gt = index.num_gt
    if num_gt == 0:
        _warn(f"{source}: the cohort has no ground-truth box; box-level recall, AUPRC_center and the COCO "
              "APs are undefined (null).")
    box_metrics: dict[str, float | None] = {}
    threshold = point.threshold
    for name, tp in (("iou50", tp_iou), ("center", tp_centre)):
        if threshold is None:
            box_metrics[f"precision_{name}"] = None
            box_metrics[f"recall_{name}"] = None
            continue
        kept = detections.scores >= threshold
        hits = int(np.count_nonzero(tp & kept))
        box_metrics[f"precision_{name}"] = hits / int(kept.sum()) if kept.any() else 0.0
        box_metrics[f"recall_{name}"] = hits / num_gt if num_gt else None

    _, pr_precision, pr_recall = precision_recall_curve_stepwise(detections.scores, tp_centre, num_gt)
    auprc = stepwise_auprc(pr_precision, pr_recall) if num_gt else None

    ap50 = ap_centre = None
    if num_gt:
        image_ids = index.frame_image_ids[np.union1d(index.gt_frame, detections.frame)].tolist()
        results = [
            {"image_id": image_id, "category_id": CATEGORY_ID, "bbox": box, "score": score}
            for image_id, box, score in zip(
                index.frame_image_ids[detections.frame].tolist(), detections.boxes.tolist(),
                detections.scores.tolist(),
            )
        ]
        coco_gt = index.coco_ground_truth()
        ap50 = coco_ap50(coco_gt, results, image_ids)
        ap_centre = coco_ap50(coco_gt, results, image_ids, CentreOverlapCOCOeval)

    if threshold is not None and not math.isfinite(threshold):
        _warn(f"{source}: no score threshold separates the classes better than chance; the Youden point is "
              "'every series negative' (threshold +inf, reported as null).")
        threshold = None
    metrics: dict[str, Any] = {
        "AUC": point.auc,
        "threshold": threshold,
        "sensitivity": point.sensitivity,
        "specificity": point.specificity,
        "sens_at_95spec": point.sens_at_95spec,
        **box_metrics,
        "AUPRC_center": auprc,
        "AP50_coco": ap50,
        "AP_center_coco": ap_centre,
        "num_series": len(labels),
        "num_positive_series": int(labels.sum()),
        "series_scores": {str(v): float(s) for v, s in zip(index.video_ids, scores.tolist())},
    }
    return SeriesEvaluation(
        metrics=metrics, labels=labels, scores=scores, video_ids=index.video_ids,
        patient_ids=index.patient_ids, roc_fpr=point.fpr, roc_tpr=point.tpr,
        pr_precision=pr_precision, pr_recall=pr_recall,
    )


def compute_series_metrics(
    cohort: Mapping[str, Any], predictions: list[dict[str, Any]], series_optimization: bool = True
) -> dict[str, Any]:
    """Every series-level metric for ``predictions`` (COCO results) on ``cohort`` (raw dict).

    Undefined values are None, with a :class:`DSAMetricWarning`. Bad predictions raise
    :class:`~perforation_d2.errors.DSAInputError`.
    """
    return evaluate_series(cohort, predictions, series_optimization).metrics


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The defined scalar metrics (no ``series_scores``, no None) as floats, for event storage."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key != "series_scores" and value is not None
    }


@contextlib.contextmanager
def printed_metric_warnings() -> Iterator[None]:
    """Print each :class:`DSAMetricWarning` raised inside as one ``warning: ...`` line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DSAMetricWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, DSAMetricWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_lines(metrics: Mapping[str, Any], series_optimization: bool) -> list[str]:
    """A few human-readable lines about ``metrics``."""
    m = metrics
    return [
        f"series: {m['num_series']} ({m['num_positive_series']} positive); "
        f"series optimisation: {'on' if series_optimization else 'off'}",
        f"AUC {_value(m['AUC'])}; Youden threshold {_value(m['threshold'])}: sensitivity "
        f"{_value(m['sensitivity'])}, specificity {_value(m['specificity'])}; "
        f"sensitivity at 95% specificity {_value(m['sens_at_95spec'])}",
        f"boxes at the threshold: IoU>=0.5 precision {_value(m['precision_iou50'])} recall "
        f"{_value(m['recall_iou50'])}; centre precision {_value(m['precision_center'])} recall "
        f"{_value(m['recall_center'])}; AUPRC_center {_value(m['AUPRC_center'])}",
        f"COCO AP50 {_value(m['AP50_coco'])}; COCO AP (centre) {_value(m['AP_center_coco'])}",
    ]
