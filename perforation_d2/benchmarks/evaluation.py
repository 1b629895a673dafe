"""The ``evaluator`` section of ``python -m perforation_d2 benchmark``.

Compares :func:`compute_series_metrics` (validation, top-1 per frame, SO, ROC statistics,
box-level matching, the step-wise PR area and two ``COCOeval`` runs) with a plain pycocotools
``COCOeval`` bbox evaluation (default parameters: evaluate, accumulate, summarize) of the same
raw predictions on the same synthetic cohort, built in memory: 500 series x 50 frames
(``--quick``: 100 x 20). Both timings include building their COCO ground truth from the cohort
dict; the three evaluations run in interleaved rounds (:func:`~.common.time_interleaved`).
Target: the full metrics take no longer than COCOeval alone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..evaluation.metrics import compute_series_metrics
from .common import BenchRow, time_interleaved


def synthetic_cohort(
    num_series: int, num_frames: int, seed: int = 0, size: int = 512
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A cohort (half the series positive, two series per patient) and detector-like predictions.

    Positive series show one perforation from a random onset frame to the end; every frame gets
    0-3 detections: near the perforation (when there is one) with higher scores, elsewhere with
    lower ones, as a detector's raw output before top-1 and SO.
    """
    rng = np.random.default_rng(seed)
    videos, images, annotations, predictions = [], [], [], []
    for video in range(num_series):
        positive = video % 2 == 1
        videos.append({
            "id": video + 1, "name": f"series{video}", "width": size, "height": size,
            "patient_id": f"patient{video // 2}", "cohort": "synthetic", "num_frames": num_frames,
            "frame_time_ms": 250.0,
        })
        onset = int(rng.integers(0, num_frames)) if positive else num_frames
        cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
        extent = float(rng.uniform(0.04, 0.1) * size)
        for frame in range(num_frames):
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"s{video}/{frame:03d}.png", "video_id": video + 1,
                           "frame_id": frame, "width": size, "height": size})
            if frame >= onset:
                box = [float(cx - extent / 2), float(cy - extent / 2), extent, extent]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "video_id": video + 1,
                                    "category_id": 1, "bbox": box, "area": extent * extent, "iscrowd": 0,
                                    "instance_id": video + 1})
                if rng.random() < 0.8:
                    jitter = rng.normal(0, 0.15 * extent, 4)
                    predictions.append({
                        "image_id": image_id, "category_id": 1,
                        "bbox": [box[0] + jitter[0], box[1] + jitter[1], extent + abs(jitter[2]),
                                 extent + abs(jitter[3])],
                        "score": float(rng.beta(5, 2)),
                    })
            for _ in range(int(rng.integers(0, 3))):
                x, y = rng.uniform(0, 0.9 * size, 2)
                w, h = rng.uniform(0.03, 0.1, 2) * size
                predictions.append({"image_id": image_id, "category_id": 1,
                                    "bbox": [float(x), float(y), float(w), float(h)], "score": float(rng.beta(2, 5))})
    cohort = {"info": {"description": "benchmark"}, "videos": videos, "images": images,
              "annotations": annotations, "categories": [{"id": 1, "name": "perforation"}]}
    return cohort, predictions


def cocoeval_alone(cohort: dict[str, Any], predictions: list[dict[str, Any]]) -> float:
    """A default pycocotools bbox evaluation of ``predictions``; returns its AP."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {key: cohort[key] for key in ("images", "annotations", "categories")}
        ground_truth.createIndex()
        results = ground_truth.loadRes(predictions)
        evaluator = COCOeval(ground_truth, results, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def benchmark_evaluator(args: argparse.Namespace) -> list[BenchRow]:
    """The series metrics against a plain COCOeval of the same predictions."""
    num_series, num_frames, repeats = (100, 20, 1) if args.quick else (500, 50, 3)
    cohort, predictions = synthetic_cohort(num_series, num_frames)
    size = f"{num_series} series x {num_frames} frames, {len(predictions)} raw detections"
    # loadRes annotates the result dicts in place: give each run its own copy, made outside the clock.
    copies = [copy.deepcopy(predictions) for _ in range(repeats)]
    times = time_interleaved({
        "cocoeval": lambda: cocoeval_alone(cohort, copies.pop()),
        "with_so": lambda: compute_series_metrics(cohort, predictions, series_optimization=True),
        "without_so": lambda: compute_series_metrics(cohort, predictions, series_optimization=False),
    }, repeats)
    with_so = times.ratio("with_so", "cocoeval")
    how = f"median of {repeats} interleaved round(s); {size}"
    return [
        BenchRow("evaluator", "COCOeval alone (default bbox)", times.seconds("cocoeval"), unit="s",
                 note=f"evaluate+accumulate+summarize incl. COCO ground truth; {how}"),
        BenchRow("evaluator", "all metrics with SO / COCOeval alone", with_so, target="<= 1x",
                 met=with_so <= 1.0, note=f"every metric key incl. two COCOeval runs; {how}"),
        BenchRow("evaluator", "all metrics without SO / COCOeval alone", times.ratio("without_so", "cocoeval"),
                 note=f"top-1 per frame, no SO: more frames for COCOeval; {how}"),
    ]
