"""Frames of a series are taken in ``frame_id`` order, whatever the order (and ids) of the images list.

The cohorts here list their images out of frame order (``make_toy_cohort(frame_order="shuffled")``:
each series backwards, series interleaved, image ids in listing order). Expected values come from
the frames' own pixels (frame ``f`` is the uniform grey ``frame_background(f)``) and from a series
whose outcome is worked out by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.cohorts import frame_background, make_cfg, make_toy_cohort

from perforation_d2.cli import main
from perforation_d2.data.cohort import load_cohort
from perforation_d2.data.mapper import DSAClipMapper
from perforation_d2.data.register import cohort_dataset_dicts

FRAMES = 6


@pytest.fixture
def shuffled(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2, frames=FRAMES, size=32, positive_patients=[0],
                                frame_order="shuffled")
    images = json.loads(json_file.read_text())["images"]
    assert [im["frame_id"] for im in images] != sorted(im["frame_id"] for im in images)  # really shuffled
    return json_file


def test_every_clip_holds_its_neighbours_in_frame_order(shuffled):
    cohort = load_cohort(shuffled)
    records = cohort_dataset_dicts(cohort, shuffled.parent)
    mapper = DSAClipMapper(make_cfg(num_frames=5, frame_size=32), is_train=False)
    negative = [r for r in records if not r["annotations"]]
    assert len(negative) == FRAMES
    for record in negative:
        f = record["frame_id"]
        expected = [frame_background(min(max(t, 0), FRAMES - 1)) for t in range(f - 2, f + 3)]
        clip = mapper(record)["image"].numpy()  # (T, 3, S, S)
        assert [int(np.median(slot)) for slot in clip[:, 0]] == expected, f


def _image_id(cohort: dict, video_id: int, frame_id: int) -> int:
    (image,) = [im for im in cohort["images"] if im["video_id"] == video_id and im["frame_id"] == frame_id]
    return image["id"]


def test_series_optimisation_links_and_breaks_ties_in_frame_order(shuffled, tmp_path, capsys):
    # Positive series 1 (its GT box on every frame): equal-score detections on frames 0 and 2, the
    # one on frame 0 on the GT box, the one on frame 2 far from it; no detection on frame 1. The
    # two are separate trajectories of equal weight, and SO keeps the EARLIEST (frame 0): a true
    # positive. Taking frames in listing order (backwards) would keep frame 2: a false positive.
    cohort = json.loads(shuffled.read_text())
    (gt,) = [a["bbox"] for a in cohort["annotations"] if a["image_id"] == _image_id(cohort, 1, 0)]
    far = [0.0, 0.0, 4.0, 4.0]
    predictions = [
        {"image_id": _image_id(cohort, 1, 0), "category_id": 1, "bbox": gt, "score": 0.5},
        {"image_id": _image_id(cohort, 1, 2), "category_id": 1, "bbox": far, "score": 0.5},
        {"image_id": _image_id(cohort, 2, 3), "category_id": 1, "bbox": far, "score": 0.2},
    ]
    pred_file = tmp_path / "pred.json"
    pred_file.write_text(json.dumps(predictions))
    out = tmp_path / "eval"
    assert main(["evaluate", "--gt", str(shuffled), "--pred", str(pred_file), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["series_scores"] == {"1": 0.5, "2": 0.2}
    assert metrics["threshold"] == 0.5
    assert metrics["precision_center"] == 1.0 and metrics["precision_iou50"] == 1.0
