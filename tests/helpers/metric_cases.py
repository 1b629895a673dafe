"""Hand-made cohorts and predictions for the metric tests (series boxes by frame, noisy detections)."""

from __future__ import annotations

import warnings

import numpy as np

from perforation_d2.evaluation import compute_series_metrics
from perforation_d2.evaluation.metrics import DSAMetricWarning

SIZE = 128


def make_cohort(series_boxes, labels=None, patients=None):
    """A cohort dict: ``series_boxes[v][f]`` is the list of GT boxes of frame f of series v.

    Video ids are 10, 11, ...; image ids 100 * video_id + frame.
    """
    videos, images, annotations = [], [], []
    for v, frames in enumerate(series_boxes):
        video_id = 10 + v
        video = {"id": video_id, "name": f"s{v}", "width": SIZE, "height": SIZE,
                 "patient_id": patients[v] if patients else f"p{v}", "cohort": "test",
                 "num_frames": len(frames), "frame_time_ms": None}
        if labels is not None:
            video["label"] = labels[v]
        videos.append(video)
        for f, boxes in enumerate(frames):
            image_id = 100 * video_id + f
            images.append({"id": image_id, "file_name": f"{video_id}/{f}.png", "video_id": video_id,
                           "frame_id": f, "width": SIZE, "height": SIZE})
            for box in boxes:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "video_id": video_id,
                                    "category_id": 1, "bbox": list(box), "area": box[2] * box[3],
                                    "iscrowd": 0, "instance_id": video_id})
    return {"info": {}, "videos": videos, "images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "perforation"}]}


def pred(video_index, frame, box, score):
    return {"image_id": 100 * (10 + video_index) + frame, "category_id": 1, "bbox": list(box), "score": score}


GT = (40, 40, 20, 20)


def random_case(seed=0, num_series=24, num_frames=6):
    """Half the series positive (a GT box from frame 2 on); noisy detections in every series."""
    rng = np.random.default_rng(seed)
    series, predictions = [], []
    for v in range(num_series):
        positive = v % 2 == 0
        series.append([[GT] if positive and f >= 2 else [] for f in range(num_frames)])
        for f in range(num_frames):
            for _ in range(int(rng.integers(0, 3))):
                if positive and f >= 2 and rng.random() < 0.6:
                    box = (40 + rng.normal(0, 4), 40 + rng.normal(0, 4), 20 + rng.normal(0, 4), 20)
                    score = float(rng.uniform(0.3, 1.0))
                else:
                    box = (float(rng.uniform(0, 100)), float(rng.uniform(0, 100)), 15.0, 12.0)
                    score = float(rng.uniform(0.0, 0.7))
                predictions.append(pred(v, f, box, round(score, 2)))  # rounding makes ties
    return make_cohort(series), predictions


def quiet_metrics(cohort, predictions, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DSAMetricWarning)
        return compute_series_metrics(cohort, predictions, **kwargs)
