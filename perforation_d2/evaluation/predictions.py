"""The one series-decision pipeline: predictions -> top-1 per frame -> series optimisation -> series score.

Every consumer of detections goes through here: the metrics (``evaluate``, ``compare``, the
training evaluator), the demo report's overlays and ``predict`` on new series, so all of them see
the same surviving boxes and the same series scores.

1. :func:`read_predictions_json` / :func:`parse_predictions` check a COCO results list against a
   strict schema (an object per entry; ``image_id`` an integer naming a frame of the cohort;
   ``category_id`` 1; ``bbox`` exactly four finite numbers ``[x, y, w, h]`` with positive width and
   height, never nested or reshaped; ``score`` a finite probability) and keep the top detection of
   each frame (ties: the first in the list). :func:`top_detection_to_coco` does the same for one
   frame of model output.
2. :func:`decide_series` applies series optimisation (:func:`optimize_series`) per series, unless
   disabled, and gives the series scores: the max surviving score, 0 without detection.

:func:`predict_one_series` runs both steps on one series of model output (``predict``).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from detectron2.structures import Instances

from ..errors import DSAInputError, format_problems
from ..io.json_io import read_json
from .cohort_index import CATEGORY_ID, CohortIndex, FrameLayout
from .series_optimization import Detection, optimize_series

SCHEMA_TEXT = '{"image_id": int, "category_id": 1, "bbox": [x, y, w, h], "score": number in [0, 1]}'


@dataclass
class FrameDetections:
    """At most one detection per frame: global frame numbers, ``x, y, w, h`` boxes and scores."""

    frame: np.ndarray  # (N,) int64, strictly increasing
    boxes: np.ndarray  # (N, 4) float64
    scores: np.ndarray  # (N,) float64

    @classmethod
    def from_frames(cls, per_frame: Sequence[Detection | None]) -> FrameDetections:
        """The detections of one series given frame by frame (None: no detection on that frame)."""
        kept = [(t, d) for t, d in enumerate(per_frame) if d is not None]
        return cls(
            frame=np.array([t for t, _ in kept], dtype=np.int64),
            boxes=np.array([d.bbox for _, d in kept], dtype=np.float64).reshape(-1, 4),
            scores=np.array([d.score for _, d in kept], dtype=np.float64),
        )

    def by_series(self, layout: FrameLayout) -> list[list[Detection | None]]:
        """Per series of ``layout``, its frames in order, each with its detection or None."""
        per_frame: list[Detection | None] = [None] * layout.num_frames
        for frame, box, score in zip(self.frame.tolist(), self.boxes.tolist(), self.scores.tolist()):
            per_frame[frame] = Detection(tuple(box), score)
        starts = layout.frame_start.tolist()
        return [per_frame[starts[v]: starts[v + 1]] for v in range(layout.num_series)]


# ---- step 1: the schema and top-1 per frame ---------------------------------------------------
def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
        return False


def _entry_problems(entry: Any, index: CohortIndex) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"is a {type(entry).__name__}, not an object"]
    problems = []
    image_id = entry.get("image_id")
    if not _is_int(image_id):
        problems.append(f"image_id {_short(image_id)} is not an integer")
    elif int(image_id) not in index.frame_of_image:
        problems.append(f"unknown image_id {image_id}")
    category_id = entry.get("category_id")
    if not (_is_int(category_id) and category_id == CATEGORY_ID):
        problems.append(f"category_id {_short(category_id)} is not {CATEGORY_ID} (perforation)")
    bbox = entry.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bbox)):
        problems.append(f"bbox {_short(bbox)} is not four numbers [x, y, w, h] (one flat list of exactly four)")
    elif not all(_is_finite_number(v) for v in bbox):
        problems.append(f"bbox {_short(list(bbox))} is not finite")
    elif not (bbox[2] > 0 and bbox[3] > 0):
        problems.append(f"bbox {_short(list(bbox))} has a non-positive width or height")
    score = entry.get("score")
    if not (isinstance(score, numbers.Real) and not isinstance(score, bool)):
        problems.append(f"score {_short(score)} is not a number")
    elif not (_is_finite_number(score) and 0.0 <= score <= 1.0):
        problems.append(f"score {_short(score)} is not a probability in [0, 1]")
    return problems


def _plain_entry(p: Any) -> bool:
    """The common case, checked cheaply: plain JSON types, and a flat bbox of four numbers."""
    if type(p) is not dict:
        return False
    bbox = p.get("bbox")
    return (type(p.get("image_id")) is int and type(p.get("category_id")) is int and p["category_id"] == CATEGORY_ID
            and type(p.get("score")) in (float, int) and type(bbox) is list and len(bbox) == 4
            and all(type(v) in (float, int) for v in bbox))


def _fast_arrays(predictions: list, index: CohortIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The arrays of well-formed predictions, or None when any entry needs the per-entry check."""
    if not all(_plain_entry(p) for p in predictions):
        return None
    try:
        frame = np.array([index.frame_of_image[p["image_id"]] for p in predictions], dtype=np.int64)
        boxes = np.array([p["bbox"] for p in predictions], dtype=np.float64)
        scores = np.array([p["score"] for p in predictions], dtype=np.float64)
    except (KeyError, OverflowError):  # unknown frame; an integer beyond float range
        return None
    if boxes.shape != (len(predictions), 4):
        return None  # cannot happen after _plain_entry, kept so that no shape is ever reshaped
    in_range = bool(np.all(np.isfinite(boxes)) and np.all(boxes[:, 2:] > 0)
                    and np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1)))
    return (frame, boxes, scores) if in_range else None


def parse_predictions(predictions: Any, index: CohortIndex, source: str = "predictions") -> FrameDetections:
    """Check a COCO results list against the schema and keep the top detection of each frame.

    Ties keep the detection that comes first in the list. Raises :class:`DSAInputError` naming
    ``source`` and the offending entries.
    """
    if not isinstance(predictions, list):
        raise DSAInputError(
            f"{source}: predictions must be a JSON list of COCO results {SCHEMA_TEXT}, "
            f"not a {type(predictions).__name__}."
        )
    arrays = _fast_arrays(predictions, index)
    if arrays is None:
        # Bad input, or numpy scalars instead of Python numbers: check every entry.
        problems = [
            f"entry {number}: {problem}"
            for number, entry in enumerate(predictions)
            for problem in _entry_problems(entry, index)
        ]
        if problems:
            raise DSAInputError(format_problems(source, problems, what="bad prediction")
                                + f" Each entry must be {SCHEMA_TEXT}.")
        arrays = (
            np.array([index.frame_of_image[int(p["image_id"])] for p in predictions], dtype=np.int64),
            np.array([[float(v) for v in p["bbox"]] for p in predictions], dtype=np.float64).reshape(-1, 4),
            np.array([float(p["score"]) for p in predictions], dtype=np.float64),
        )
    frame, boxes, scores = arrays
    # Top-1 per frame: by frame, then score descending, then position in the list.
    order = np.lexsort((np.arange(len(scores)), -scores, frame))
    first = np.ones(len(order), dtype=bool)
    first[1:] = frame[order][1:] != frame[order][:-1]
    keep = order[first]
    return FrameDetections(frame=frame[keep], boxes=boxes[keep], scores=scores[keep])


def read_predictions_json(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a COCO results file (not yet checked against a cohort). ``[]`` means "no detection";
    an empty file is an error (it usually means an interrupted run)."""
    predictions = read_json(path, "predictions file", f"Expected a JSON list of COCO results {SCHEMA_TEXT}; a run "
                            "without any detection is written as an empty list [].")
    if not isinstance(predictions, list):
        raise DSAInputError(
            f"{path}: expected a JSON list of COCO results {SCHEMA_TEXT}, found a {type(predictions).__name__}."
        )
    return predictions


def top_detection_to_coco(instances: Instances, image_id: int) -> list[dict[str, Any]]:
    """The highest-scoring box of one frame as a one-element COCO results list (empty if none).

    Boxes come in original-frame pixels (XYXY) and go out as ``[x, y, w, h]``; ties keep the
    first box (the model's order). Degenerate boxes (zero width or height) are not candidates.
    """
    if len(instances) == 0:
        return []
    instances = instances.to("cpu")
    boxes = instances.pred_boxes.tensor.to(torch.float64)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    valid = (widths > 0) & (heights > 0)
    if not bool(valid.any()):
        return []
    scores = torch.where(valid, instances.scores.to(torch.float64), torch.tensor(-1.0, dtype=torch.float64))
    best = int(torch.argmax(scores))  # the first maximum
    x0, y0 = float(boxes[best, 0]), float(boxes[best, 1])
    return [{
        "image_id": int(image_id),
        "category_id": CATEGORY_ID,
        "bbox": [x0, y0, float(widths[best]), float(heights[best])],
        "score": float(instances.scores[best]),
    }]


# ---- step 2: series optimisation and series scores --------------------------------------------
def apply_series_optimization(detections: FrameDetections, layout: FrameLayout) -> FrameDetections:
    """Run :func:`optimize_series` on every series of ``layout`` that has a detection."""
    frames: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    scores: list[float] = []
    video_of_detection = layout.frame_video[detections.frame]
    bounds = np.flatnonzero(np.diff(video_of_detection)) + 1
    box_list = detections.boxes.tolist()
    score_list = detections.scores.tolist()
    frame_list = detections.frame.tolist()
    for chunk in np.split(np.arange(len(frame_list)), bounds):
        if len(chunk) == 0:
            continue
        video = int(video_of_detection[chunk[0]])
        start, end = int(layout.frame_start[video]), int(layout.frame_start[video + 1])
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


def series_scores_of(detections: FrameDetections, layout: FrameLayout) -> np.ndarray:
    """Max detection score per series (0 when a series has none)."""
    scores = np.zeros(layout.num_series, dtype=np.float64)
    np.maximum.at(scores, layout.frame_video[detections.frame], detections.scores)
    return scores


@dataclass
class SeriesDecisions:
    """What survives step 2, and the series scores (one per series of the layout)."""

    detections: FrameDetections
    scores: np.ndarray


def decide_series(detections: FrameDetections, layout: FrameLayout, series_optimization: bool = True
                  ) -> SeriesDecisions:
    """Series optimisation (unless ``series_optimization`` is False) and the series scores."""
    if series_optimization:
        detections = apply_series_optimization(detections, layout)
    return SeriesDecisions(detections=detections, scores=series_scores_of(detections, layout))


def surviving_detections(cohort: Mapping[str, Any] | CohortIndex, predictions: Any, series_optimization: bool = True,
                         source: str = "predictions") -> dict[int, list[Detection | None]]:
    """Per video id, its frames in ``frame_id`` order with the detection that survives steps 1 and 2."""
    index = cohort if isinstance(cohort, CohortIndex) else CohortIndex(cohort)
    decided = decide_series(parse_predictions(predictions, index, source), index, series_optimization)
    return dict(zip(index.video_ids, decided.detections.by_series(index)))


@dataclass
class SeriesResult:
    """One series decided frame by frame: what ``predict`` writes and draws."""

    raw: list[dict]  # COCO results before SO
    optimized: list[dict]  # COCO results after SO
    boxes_xyxy: list[list[float] | None]  # per frame, after SO
    scores: list[float | None]  # per frame, after SO
    score: float
    frame_of_max: int | None


def predict_one_series(predictor: Callable[[np.ndarray], Sequence[Any]], frames: np.ndarray,
                       image_ids: Sequence[int], series_optimization: bool = True) -> SeriesResult:
    """Top-1 per frame, SO (unless ``series_optimization`` is False), and the series score of one series."""
    raw_per_frame = [top_detection_to_coco(inst, image_id) for inst, image_id in zip(predictor(frames), image_ids)]
    detections = [Detection(tuple(r[0]["bbox"]), r[0]["score"]) if r else None for r in raw_per_frame]
    layout = FrameLayout([len(detections)])
    decided = decide_series(FrameDetections.from_frames(detections), layout, series_optimization)
    optimized = decided.detections.by_series(layout)[0]
    kept = [t for t, d in enumerate(optimized) if d is not None]
    frame_of_max = max(kept, key=lambda t: (detections[t].score, -t)) if kept else None
    coco_so, boxes, scores = [], [], []
    for t, detection in enumerate(optimized):
        if detection is None:
            boxes.append(None)
            scores.append(None)
            continue
        x, y, w, h = detection.bbox
        boxes.append([x, y, x + w, y + h])
        scores.append(detection.score)
        coco_so.append({**raw_per_frame[t][0], "score": detection.score})
    return SeriesResult(
        raw=[r[0] for r in raw_per_frame if r], optimized=coco_so, boxes_xyxy=boxes, scores=scores,
        score=float(decided.scores[0]), frame_of_max=frame_of_max,
    )
