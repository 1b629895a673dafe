"""An independent re-implementation of the series metrics, for tests that need expected values.

Written from SPEC section 3 without the package's evaluation code: top detection of each frame
(the first maximum), series optimisation in plain Python, series score = the maximum surviving
score, scikit-learn for the ROC, and hand-written IoU / centre-overlap box matching at the Youden
threshold. Tests compare the commands' outputs with it instead of with ``compute_series_metrics``
(which shares the pipeline under test).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def _inside(a, b) -> bool:
    cx, cy = a[0] + a[2] / 2, a[1] + a[3] / 2
    return b[0] <= cx <= b[0] + b[2] and b[1] <= cy <= b[1] + b[3]


def centres_overlap(a, b) -> bool:
    return _inside(a, b) or _inside(b, a)


def iou(a, b) -> float:
    ix = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    iy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(ix, 0) * max(iy, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def optimise(detections: list[dict | None]) -> list[dict | None]:
    """Series optimisation of one series (frames in order): the heaviest chain, its mean score."""
    chains, current = [], []
    for t, d in enumerate(detections):
        previous = detections[t - 1] if t > 0 else None
        if current and not (d and previous and centres_overlap(d["bbox"], previous["bbox"])):
            chains.append(current)
            current = []
        if d:
            current.append(t)
    if current:
        chains.append(current)
    if not chains:
        return [None] * len(detections)
    best = max(chains, key=lambda c: sum(detections[t]["score"] for t in c) * len(c))  # first on ties
    mean = sum(detections[t]["score"] for t in best) / len(best)
    return [{**detections[t], "score": mean} if t in best else None for t in range(len(detections))]


def surviving(cohort: dict, predictions: list[dict], series_optimization: bool = True) -> dict[int, list]:
    """Per video id, its frames in frame_id order with their surviving detection (or None)."""
    top: dict[int, dict] = {}
    for p in predictions:  # the first maximum of each frame
        if p["image_id"] not in top or p["score"] > top[p["image_id"]]["score"]:
            top[p["image_id"]] = p
    frames = defaultdict(list)
    for image in cohort["images"]:
        frames[image["video_id"]].append(image)
    result = {}
    for video in cohort["videos"]:
        images = sorted(frames[video["id"]], key=lambda im: im["frame_id"])
        detections = [top.get(im["id"]) for im in images]
        result[video["id"]] = optimise(detections) if series_optimization else detections
    return result


def series_scores(cohort: dict, predictions: list[dict], series_optimization: bool = True) -> dict[str, float]:
    """``{str(video_id): score}``: the highest surviving score of each series (0 without any)."""
    kept = surviving(cohort, predictions, series_optimization)
    return {str(v): float(max((d["score"] for d in frames if d), default=0.0)) for v, frames in kept.items()}


def independent_metrics(cohort: dict, predictions: list[dict], series_optimization: bool = True) -> dict[str, Any]:
    kept = surviving(cohort, predictions, series_optimization)
    boxed_videos = {a["video_id"] for a in cohort["annotations"]}
    video_ids = [v["id"] for v in cohort["videos"]]
    labels = np.array([int(v in boxed_videos) for v in video_ids])
    scores = np.array([max((d["score"] for d in kept[v] if d), default=0.0) for v in video_ids])
    out: dict[str, Any] = {"series_scores": {str(v): float(s) for v, s in zip(video_ids, scores)},
                           "num_series": len(video_ids), "num_positive_series": int(labels.sum())}
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    j = int(np.argmax(tpr - fpr))
    allowed = np.flatnonzero(fpr <= 0.05)
    out.update(AUC=float(roc_auc_score(labels, scores)), sensitivity=float(tpr[j]), specificity=float(1 - fpr[j]),
               sens_at_95spec=float(tpr[allowed].max()))
    threshold = float(thresholds[j])
    out["threshold"] = threshold if np.isfinite(threshold) else None
    gt = defaultdict(list)
    for a in cohort["annotations"]:
        gt[a["image_id"]].append(a["bbox"])
    num_gt = len(cohort["annotations"])
    final = [d for v in video_ids for d in kept[v] if d and d["score"] >= threshold]
    for name, hit in (("iou50", lambda d, g: iou(d, g) >= 0.5), ("center", centres_overlap)):
        hits = sum(any(hit(d["bbox"], g) for g in gt[d["image_id"]]) for d in final)
        out[f"precision_{name}"] = hits / len(final) if final else 0.0
        out[f"recall_{name}"] = hits / num_gt if num_gt else None
    return out
