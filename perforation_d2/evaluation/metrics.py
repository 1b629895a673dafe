"""Series-level metrics of SPEC section 4 (paper section 4.2), as pure functions.

``compute_series_metrics(cohort, predictions)`` takes the raw COCO-video cohort dict (SPEC
section 1) and a COCO results list and returns every key of SPEC section 4. The pipeline is:

1. validate the predictions (a bad entry raises :class:`DSAInputError` naming the source);
2. keep the top detection of each frame (ties: the first in the predictions list);
3. apply series optimisation (:func:`optimize_series`) per series, unless disabled;
4. series score = max surviving score of the series (0 without detection); ROC statistics
   against the series labels with scikit-learn;
5. box-level precision / recall at the Youden threshold, the step-wise centre-criterion PR area,
   and pycocotools' ``COCOeval`` AP at IoU 0.5 and with the centre-overlap criterion.

Decisions the SPEC leaves open, fixed here:

- Scores are probabilities: a score that is NaN, infinite, negative or above 1 is an error.
- Every prediction must carry ``category_id`` 1 (the cohort's only category).
- Undefined values are ``None`` and a :class:`DSAMetricWarning` is issued: ROC values when the
  cohort has a single class; box-level recall, ``AUPRC_center`` and the COCO APs when it has no
  ground-truth box. A Youden point at the trivial "everything negative" end of the ROC (threshold
  +inf, when no threshold beats chance) keeps its sensitivity/specificity, reports
  ``threshold: None`` (JSON has no infinity) and keeps no detection for precision/recall.
- After step 2 a frame has at most one detection, so the greedy matching of SPEC section 4
  reduces to: a detection is a true positive when some ground-truth box of its frame satisfies
  the criterion. Matching order therefore never matters.
- ``COCOeval`` is given only the frames that hold a ground-truth box or a detection: the other
  frames contribute nothing to it (its ``evaluateImg`` returns None for them), so the result is
  identical to a run over every frame, in a fraction of the time.
- ``series_scores`` is keyed by ``str(video_id)``, as it appears in ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import roc_auc_score, roc_curve

from ..data.cohort import series_labels
from ..errors import DSAInputError, format_problems
from .series_optimization import Detection, centres_overlap, optimize_series

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

CATEGORY_ID = 1


class DSAMetricWarning(UserWarning):
    """A metric is undefined for this cohort or these predictions and was reported as None."""


def _warn(message: str) -> None:
    warnings.warn(message, DSAMetricWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Cohort index
# ---------------------------------------------------------------------------------------------


def restrict_cohort(cohort: Mapping[str, Any], video_ids: Iterable[int]) -> dict[str, Any]:
    """The cohort reduced to the series ``video_ids`` (their videos, images and annotations)."""
    keep = set(video_ids)
    images = [img for img in cohort["images"] if img["video_id"] in keep]
    image_ids = {img["id"] for img in images}
    restricted = dict(cohort)
    restricted["videos"] = [video for video in cohort["videos"] if video["id"] in keep]
    restricted["images"] = images
    restricted["annotations"] = [ann for ann in cohort["annotations"] if ann["image_id"] in image_ids]
    return restricted


class CohortIndex:
    """Arrays and lookups of one (validated) cohort, built once and reused across predictions.

    Frames are numbered globally, series by series in cohort order and by ``frame_id`` inside a
    series; ``frame_start[v] .. frame_start[v + 1]`` are the frames of series ``v``.
    """

    def __init__(self, cohort: Mapping[str, Any]):
        self.cohort = cohort
        videos = list(cohort["videos"])
        self.video_ids: list[int] = [int(video["id"]) for video in videos]
        self.patient_ids: list[str] = [str(video.get("patient_id", video["id"])) for video in videos]
        video_position = {video_id: position for position, video_id in enumerate(self.video_ids)}
        labels = series_labels(cohort)
        self.labels = np.array([int(labels[video_id]) for video_id in self.video_ids], dtype=np.int64)

        frames_of_video: list[list[tuple[int, int]]] = [[] for _ in videos]
        self.image_info: dict[int, Mapping[str, Any]] = {}
        for image in cohort["images"]:
            frames_of_video[video_position[image["video_id"]]].append((int(image["frame_id"]), int(image["id"])))
            self.image_info[int(image["id"])] = image
        counts = [len(frames) for frames in frames_of_video]
        self.frame_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.frame_image_ids = np.array(
            [image_id for frames in frames_of_video for _, image_id in sorted(frames)], dtype=np.int64
        )
        self.frame_video = np.repeat(np.arange(len(videos)), counts).astype(np.int64)
        self.frame_of_image: dict[int, int] = {
            int(image_id): position for position, image_id in enumerate(self.frame_image_ids.tolist())
        }

        annotations = list(cohort["annotations"])
        gt_frame = np.array([self.frame_of_image[int(ann["image_id"])] for ann in annotations], dtype=np.int64)
        gt_boxes = np.array([ann["bbox"] for ann in annotations], dtype=np.float64).reshape(-1, 4)
        order = np.argsort(gt_frame, kind="stable")
        self.gt_frame = gt_frame[order]
        self.gt_boxes = gt_boxes[order]
        self._gt_annotations = [annotations[i] for i in order.tolist()]
        # gt_first[f] .. gt_first[f + 1]: the ground-truth boxes of frame f.
        self.gt_first = np.searchsorted(self.gt_frame, np.arange(len(self.frame_image_ids) + 1))
        self._coco_gt: COCO | None = None

    @property
    def num_gt(self) -> int:
        return len(self.gt_frame)

    def coco_ground_truth(self) -> COCO:
        """The cohort as a pycocotools ``COCO`` object (every frame an image), built on first use."""
        if self._coco_gt is None:
            images = [
                {"id": int(image_id), "width": self.image_info[image_id]["width"],
                 "height": self.image_info[image_id]["height"]}
                for image_id in self.frame_image_ids.tolist()
            ]
            annotations = []
            for number, ann in enumerate(self._gt_annotations, start=1):
                x, y, w, h = (float(v) for v in ann["bbox"])
                annotations.append({
                    "id": number, "image_id": int(ann["image_id"]), "category_id": CATEGORY_ID,
                    "bbox": [x, y, w, h], "area": float(ann.get("area", w * h)), "iscrowd": 0,
                })
            coco = COCO()
            coco.dataset = {"images": images, "annotations": annotations,
                            "categories": [{"id": CATEGORY_ID, "name": "perforation"}]}
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco_gt = coco
        return self._coco_gt


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


@dataclass
class FrameDetections:
    """At most one detection per frame: global frame numbers, ``x, y, w, h`` boxes and scores."""

    frame: np.ndarray  # (N,) int64, strictly increasing
    boxes: np.ndarray  # (N, 4) float64
    scores: np.ndarray  # (N,) float64


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _entry_problems(entry: Any, index: CohortIndex) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"is a {type(entry).__name__}, not an object"]
    problems = []
    image_id = entry.get("image_id")
    if not (isinstance(image_id, numbers.Integral) and not isinstance(image_id, bool)):
        problems.append(f"image_id {image_id!r} is not an integer")
    elif int(image_id) not in index.frame_of_image:
        problems.append(f"unknown image_id {image_id}")
    if entry.get("category_id") != CATEGORY_ID:
        problems.append(f"category_id {entry.get('category_id')!r} is not {CATEGORY_ID} (perforation)")
    bbox = entry.get("bbox")
    if not (isinstance(bbox, Sequence) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        problems.append(f"bbox {bbox!r} is not four numbers [x, y, w, h]")
    elif not all(math.isfinite(v) for v in bbox):
        problems.append(f"bbox {list(bbox)} is not finite")
    elif not (bbox[2] > 0 and bbox[3] > 0):
        problems.append(f"bbox {list(bbox)} has a non-positive width or height")
    score = entry.get("score")
    if not _is_number(score):
        problems.append(f"score {score!r} is not a number")
    elif not (math.isfinite(score) and 0.0 <= score <= 1.0):
        problems.append(f"score {score!r} is not a probability in [0, 1]")
    return problems


def parse_predictions(predictions: Any, index: CohortIndex, source: str = "predictions") -> FrameDetections:
    """Validate a COCO results list and keep the top detection of each frame.

    Ties keep the detection that comes first in the list. Raises :class:`DSAInputError` naming
    ``source`` and the offending entries.
    """
    if not isinstance(predictions, list):
        raise DSAInputError(
            f"{source}: predictions must be a JSON list of COCO results "
            f'{{"image_id", "category_id", "bbox": [x, y, w, h], "score"}}, not a {type(predictions).__name__}.'
        )
    arrays = None
    try:
        frame = np.array([index.frame_of_image[p["image_id"]] for p in predictions], dtype=np.int64)
        boxes = np.array([p["bbox"] for p in predictions], dtype=np.float64).reshape(-1, 4)
        scores = np.array([p["score"] for p in predictions], dtype=np.float64)
        well_typed = all(
            type(p["image_id"]) is int and type(p["score"]) in (float, int) and p["category_id"] == CATEGORY_ID
            for p in predictions
        )
        in_range = bool(
            np.all(np.isfinite(boxes)) and np.all(boxes[:, 2:] > 0)
            and np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
        )
        if well_typed and in_range:
            arrays = frame, boxes, scores
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    if arrays is None:
        # Slow path (bad input, or numpy scalars instead of Python numbers): check every entry.
        problems = [
            f"entry {number}: {problem}"
            for number, entry in enumerate(predictions)
            for problem in _entry_problems(entry, index)
        ]
        if problems:
            raise DSAInputError(format_problems(source, problems, what="bad prediction"))
        frame = np.array([index.frame_of_image[int(p["image_id"])] for p in predictions], dtype=np.int64)
        boxes = np.array([[float(v) for v in p["bbox"]] for p in predictions], dtype=np.float64).reshape(-1, 4)
        scores = np.array([float(p["score"]) for p in predictions], dtype=np.float64)
    else:
        frame, boxes, scores = arrays

    # Top-1 per frame: by frame, then score descending, then position in the list.
    order = np.lexsort((np.arange(len(scores)), -scores, frame))
    first = np.ones(len(order), dtype=bool)
    first[1:] = frame[order][1:] != frame[order][:-1]
    keep = order[first]
    return FrameDetections(frame=frame[keep], boxes=boxes[keep], scores=scores[keep])


def apply_series_optimization(detections: FrameDetections, index: CohortIndex) -> FrameDetections:
    """Run :func:`optimize_series` on every series that has a detection."""
    frames: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    scores: list[float] = []
    video_of_detection = index.frame_video[detections.frame]
    bounds = np.flatnonzero(np.diff(video_of_detection)) + 1
    box_list = detections.boxes.tolist()
    score_list = detections.scores.tolist()
    frame_list = detections.frame.tolist()
    for chunk in np.split(np.arange(len(frame_list)), bounds):
        if len(chunk) == 0:
            continue
        video = int(video_of_detection[chunk[0]])
        start, end = int(index.frame_start[video]), int(index.frame_start[video + 1])
        series: list[Detection | None] = [None] * (end - start)
        for i in chunk.tolist():
            series[frame_list[i] - start] = Detection(bbox=tuple(box_list[i]), score=score_list[i])
        for offset, detection in enumerate(optimize_series(series)):
            if detection is not None:
                frames.append(start + offset)
                boxes.append(detection.bbox)
                scores.append(detection.score)
    return FrameDetections(
        frame=np.array(frames, dtype=np.int64),
        boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
        scores=np.array(scores, dtype=np.float64),
    )


# ---------------------------------------------------------------------------------------------
# Box-level matching
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# COCOeval
# ---------------------------------------------------------------------------------------------


class CentreOverlapCOCOeval(COCOeval):
    """``COCOeval`` whose matching function is the centre-overlap criterion (1.0 or 0.0)."""

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:  # pycocotools' camelCase name
        p = self.params
        if p.useCats:
            gt = self._gts[imgId, catId]
            dt = self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if len(gt) == 0 or len(dt) == 0:
            return []
        # Same detection order and truncation as COCOeval.computeIoU: evaluateImg relies on it.
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        return np.array(
            [[1.0 if centres_overlap(d["bbox"], g["bbox"]) else 0.0 for g in gt] for d in dt], dtype=np.float64
        )


def coco_ap50(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    image_ids: Sequence[int],
    evaluator_class: type[COCOeval] = COCOeval,
) -> float | None:
    """AP of ``results`` by pycocotools with ``iouThrs=[0.5]``, ``maxDets=[1]``, area "all".

    ``results`` are COCO results (``image_id``, ``category_id``, ``bbox``, ``score``).
    AP is the mean of ``eval["precision"]`` over the 101 recall thresholds (entries > -1);
    None when every entry is -1 (no ground-truth box among ``image_ids``).
    """
    annotations = [
        {**r, "id": number, "area": float(r["bbox"][2] * r["bbox"][3]), "iscrowd": 0}
        for number, r in enumerate(results, start=1)
    ]
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
        evaluator = evaluator_class(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [1]
        evaluator.params.areaRng = [[0.0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, 0, 0, 0]
    valid = precision[precision > -1]
    return float(np.mean(valid)) if len(valid) else None


# ---------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------


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


@dataclass
class OperatingPoint:
    """ROC statistics of one set of series scores; every field None when a single class is present."""

    auc: float | None
    threshold: float | None  # Youden; may be +inf (nothing positive)
    sensitivity: float | None
    specificity: float | None
    sens_at_95spec: float | None
    fpr: np.ndarray | None
    tpr: np.ndarray | None
    # The threshold behind ``sens_at_95spec`` and its specificity; the threshold may be +inf.
    spec95_threshold: float | None = None
    spec95_specificity: float | None = None


def roc_statistics(labels: np.ndarray, scores: np.ndarray) -> OperatingPoint:
    """AUC, Youden operating point and sensitivity at 95% specificity (SPEC section 4).

    Both points are the first maximum in scikit-learn's ROC order, i.e. the highest threshold
    among ties. The 95%-specificity point is the highest sensitivity with FPR <= 0.05.
    """
    if len(np.unique(labels)) < 2:
        return OperatingPoint(None, None, None, None, None, None, None)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    youden = int(np.argmax(tpr - fpr))
    allowed = np.flatnonzero(fpr <= 0.05)  # never empty: the curve starts at FPR 0
    spec95 = int(allowed[np.argmax(tpr[allowed])])
    return OperatingPoint(
        auc=float(roc_auc_score(labels, scores)),
        threshold=float(thresholds[youden]),
        sensitivity=float(tpr[youden]),
        specificity=float(1.0 - fpr[youden]),
        sens_at_95spec=float(tpr[spec95]),
        fpr=fpr,
        tpr=tpr,
        spec95_threshold=float(thresholds[spec95]),
        spec95_specificity=float(1.0 - fpr[spec95]),
    )


def series_scores_of(detections: FrameDetections, index: CohortIndex) -> np.ndarray:
    """Max detection score per series (0 when a series has none)."""
    scores = np.zeros(len(index.video_ids), dtype=np.float64)
    np.maximum.at(scores, index.frame_video[detections.frame], detections.scores)
    return scores


def evaluate_series(
    cohort: Mapping[str, Any] | CohortIndex,
    predictions: Any,
    series_optimization: bool = True,
    source: str = "predictions",
) -> SeriesEvaluation:
    """Everything :func:`compute_series_metrics` computes, plus the curves behind it."""
    index = cohort if isinstance(cohort, CohortIndex) else CohortIndex(cohort)
    detections = parse_predictions(predictions, index, source)
    if series_optimization:
        detections = apply_series_optimization(detections, index)
    scores = series_scores_of(detections, index)
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
    """Every metric of SPEC section 4 for ``predictions`` (COCO results) on ``cohort`` (raw dict).

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
