"""Box-level matching of the surviving detections against the ground truth (IoU >= 0.5 and centre overlap).

After top-1 per frame a frame has at most one detection, so the greedy matching of the metrics
reduces to: a detection is a true positive when some ground-truth box of its frame satisfies the
criterion. Matching order therefore never matters. Also the step-wise precision-recall curve and
its area, over those true-positive flags.
"""

from __future__ import annotations

import numpy as np

from .cohort_index import CohortIndex
from .predictions import FrameDetections


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of ``x, y, w, h`` boxes (COCO's continuous-coordinate definition)."""
    ix = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    iy = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return inter / union


def _centre_inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cx = a[:, 0] + a[:, 2] / 2.0
    cy = a[:, 1] + a[:, 3] / 2.0
    return (b[:, 0] <= cx) & (cx <= b[:, 0] + b[:, 2]) & (b[:, 1] <= cy) & (cy <= b[:, 1] + b[:, 3])


def centre_overlap_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise centre-overlap criterion (centre of one box inside the other, borders inclusive)."""
    return _centre_inside(a, b) | _centre_inside(b, a)


def match_detections(detections: FrameDetections, index: CohortIndex) -> tuple[np.ndarray, np.ndarray]:
    """True-positive flags ``(iou50, centre)`` of every detection (one detection per frame)."""
    n = len(detections.frame)
    counts = index.gt_first[detections.frame + 1] - index.gt_first[detections.frame]
    det_of_pair = np.repeat(np.arange(n), counts)
    # Pair k of detection i is GT gt_first[frame_i] + (k - first pair of i).
    pair_offset = np.arange(len(det_of_pair)) - np.repeat(np.cumsum(counts) - counts, counts)
    gt_of_pair = index.gt_first[detections.frame][det_of_pair] + pair_offset
    det_boxes = detections.boxes[det_of_pair]
    gt_boxes = index.gt_boxes[gt_of_pair]
    tp_iou = np.zeros(n, dtype=bool)
    tp_centre = np.zeros(n, dtype=bool)
    np.logical_or.at(tp_iou, det_of_pair, box_iou(det_boxes, gt_boxes) >= 0.5)
    np.logical_or.at(tp_centre, det_of_pair, centre_overlap_rows(det_boxes, gt_boxes))
    return tp_iou, tp_centre


def precision_recall_curve_stepwise(
    scores: np.ndarray, true_positive: np.ndarray, num_gt: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One PR point per distinct score, descending (tied scores enter together).

    Returns ``(thresholds, precision, recall)``; recall is over ``num_gt`` boxes.
    """
    if len(scores) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    cum_tp = np.cumsum(true_positive[order])
    # The last index of each run of equal scores.
    last = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    kept = last + 1
    precision = cum_tp[last] / kept
    recall = cum_tp[last] / num_gt if num_gt > 0 else np.zeros(len(last))
    return sorted_scores[last], precision, recall


def stepwise_auprc(precision: np.ndarray, recall: np.ndarray) -> float:
    """``sum (R_n - R_{n-1}) P_n`` with ``R_0 = 0``."""
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
