"""Time-order negatives: which reordered clips become negatives, and what the mapper then yields."""

from __future__ import annotations

import numpy as np
import pytest
from detectron2.structures import BoxMode
from helpers.cohorts import frame_background, make_cfg, make_toy_cohort

from perforation_d2.data.cohort import load_cohort
from perforation_d2.data.mapper import DSAClipMapper, check_input_config, clip_indices
from perforation_d2.data.register import cohort_dataset_dicts
from perforation_d2.data.time_order_negatives import (
    TimeOrderNegatives,
    course_breaks,
    lesion_sizes,
    series_boxes,
)
from perforation_d2.errors import DSAInputError


def growing_boxes(num_frames: int, start: float = 4.0, step: float = 3.0,
                  centre=(30.0, 30.0)) -> list[list[list[float]]]:
    """Per frame, the one box of a lesion centred at ``centre`` whose side grows by ``step`` px a frame."""
    cx, cy = centre
    return [[[cx - (start + step * t) / 2, cy - (start + step * t) / 2, start + step * t, start + step * t]]
            for t in range(num_frames)]


def record(frame_boxes: list[list[list[float]]], frame_id: int) -> dict:
    return {"video_id": 7, "frame_id": frame_id, "series_boxes": series_boxes(frame_boxes),
            "annotations": [{"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
                            for box in frame_boxes[frame_id]]}


def test_course_breaks_on_shrinking_or_vanishing_only():
    assert not course_breaks([4, 7, 10, 13, 16], 0.2)
    assert not course_breaks([0, 0, 5, 9, 9], 0.2)  # appears, grows, persists
    assert not course_breaks([20, 18, 19, 17, 20], 0.2)  # plateau: 15% below the peak at most
    assert course_breaks([20, 18, 15.9, 17, 20], 0.2)  # 20.5% below the earlier 20
    assert course_breaks([16, 13, 10, 7, 4], 0.2)  # reversed growth
    assert course_breaks([5, 9, 0, 9, 9], 0.2)  # vanishes for a frame
    assert not course_breaks([10, 9], 0.2) and course_breaks([10, 9], 0.1)


def test_lesion_sizes_follow_the_centre_overlapping_box():
    frames = [[[20, 20, 4, 4]], [[18, 18, 8, 8], [100, 100, 50, 50]], [], [[16, 16, 12, 12], [10, 10, 30, 30]]]
    boxes = series_boxes(frames)
    assert boxes.shape == (5, 5) and boxes.dtype == np.float32
    # Frame 1's far box does not overlap; frame 2 has none; frame 3 takes the larger of its two.
    assert lesion_sizes(boxes, [20, 20, 4, 4], [0, 1, 2, 3, 1]) == [4.0, 8.0, 0.0, 30.0, 8.0]
    assert series_boxes([[], []]).shape == (0, 5)


def test_growing_clip_out_of_order_becomes_a_negative():
    frame_boxes = growing_boxes(9)
    negatives = TimeOrderNegatives(1.0, 0.2, rng=np.random.default_rng(0))
    indices = clip_indices(4, 9, 5)
    seen = set()
    for _ in range(40):
        order = negatives(record(frame_boxes, 4), indices)
        assert order is not None and sorted(order) == list(range(5)) and order[2] == 2
        assert order != list(range(5))
        sizes = lesion_sizes(series_boxes(frame_boxes), frame_boxes[4][0], [indices[s] for s in order])
        assert course_breaks(sizes, 0.2)
        seen.add(tuple(order))
    assert (4, 3, 2, 1, 0) in seen and len(seen) > 3  # reversals and shuffles


@pytest.mark.parametrize("case", ["plateau", "repeated frames", "no box", "single frame", "one of two keeps"])
def test_clips_whose_course_cannot_break_keep_their_order(case):
    negatives = TimeOrderNegatives(1.0, 0.2, rng=np.random.default_rng(1))
    grown = growing_boxes(9)
    frame_boxes, indices = {
        "plateau": ([[[20, 20, 10, 10]]] * 9, clip_indices(4, 9, 5)),
        "repeated frames": (grown[:1], clip_indices(0, 1, 5)),  # a one-frame series: one frame in every slot
        "no box": ([[] for _ in range(9)], clip_indices(4, 9, 5)),
        "single frame": (grown, [4]),
        # A second, fully grown perforation far away keeps its size: the clip is not a negative.
        "one of two keeps": ([boxes + [[60, 60, 10, 10]] for boxes in grown], clip_indices(4, 9, 5)),
    }[case]
    centre = indices[len(indices) // 2]
    for _ in range(20):
        assert negatives(record(frame_boxes, centre), indices) is None


def test_probability_sets_the_share_of_clips_tried():
    frame_boxes = growing_boxes(9)
    negatives = TimeOrderNegatives(0.3, 0.2, rng=np.random.default_rng(2))
    made = sum(negatives(record(frame_boxes, 4), clip_indices(4, 9, 5)) is not None for _ in range(2000))
    assert 0.26 < made / 2000 < 0.34  # every reordering of a steadily growing clip breaks it
    assert TimeOrderNegatives(0.0, 0.2)(record(frame_boxes, 4), clip_indices(4, 9, 5)) is None


def test_a_record_without_series_boxes_is_a_clear_error():
    negatives = TimeOrderNegatives(1.0, 0.2)
    bare = {"video_id": 3, "frame_id": 2, "annotations": [{"bbox": [1, 1, 4, 4], "iscrowd": 0}]}
    with pytest.raises(DSAInputError, match="video 3: .*series_boxes.*TIME_ORDER_NEGATIVES.PROB 0"):
        negatives(bare, [0, 1, 2, 3, 4])


@pytest.mark.parametrize("key,value", [("PROB", 1.5), ("PROB", -0.1), ("MIN_SHRINK", 0.0), ("MIN_SHRINK", True)])
def test_bad_settings_are_rejected_before_training(key, value):
    cfg = make_cfg()
    cfg.INPUT.TIME_ORDER_NEGATIVES[key] = value
    with pytest.raises(DSAInputError, match=f"INPUT.TIME_ORDER_NEGATIVES.{key} = "):
        check_input_config(cfg)


def test_registered_dicts_carry_their_series_boxes(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2, frames=4, positive_patients=[0])
    dicts = cohort_dataset_dicts(load_cohort(json_file), json_file.parent)
    for d in dicts:
        boxes = d["series_boxes"]
        assert boxes is dicts[0 if d["video_id"] == dicts[0]["video_id"] else -1]["series_boxes"]
        own = boxes[boxes[:, 0] == d["frame_id"]][:, 1:].tolist()
        assert own == [pytest.approx(a["bbox"]) for a in d["annotations"]]


def test_mapper_trains_the_reordered_clip_without_boxes(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=1, frames=9, positive_patients=[0])
    dicts = cohort_dataset_dicts(load_cohort(json_file), json_file.parent)
    frame_boxes = growing_boxes(9)
    d = dict(dicts[4], **record(frame_boxes, 4))
    cfg = make_cfg(5)
    cfg.INPUT.DSA_AUG.ENABLED = False
    cfg.INPUT.TIME_ORDER_NEGATIVES.PROB = 1.0
    out = DSAClipMapper(cfg, is_train=True)(d)
    levels = out["image"][:, 0, 0, 0].tolist()
    natural = [frame_background(i) for i in clip_indices(4, 9, 5)]
    assert levels[2] == natural[2] and levels != natural and sorted(levels) == sorted(natural)
    assert len(out["instances"]) == 0

    cfg.INPUT.TIME_ORDER_NEGATIVES.PROB = 0.0  # off: the clip in order, with its box
    out = DSAClipMapper(cfg, is_train=True)(d)
    assert out["image"][:, 0, 0, 0].tolist() == natural and len(out["instances"]) == 1
    cfg.INPUT.TIME_ORDER_NEGATIVES.PROB = 1.0  # never at test time
    out = DSAClipMapper(cfg, is_train=False)(d)
    assert out["image"][:, 0, 0, 0].tolist() == natural and len(out["instances"]) == 1
