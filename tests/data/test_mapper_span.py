"""Clips spanning a fixed duration (MODEL.TEMPORAL.CLIP_SPAN_MS): frame choice, the mapped clip,
the series' frame time in the dataset dicts, and the error for a series without one.

Expected indices are worked out by hand from the rule "slot j is the frame nearest in time to
time(t) + j * span / (T - 1), ties to the earlier frame, clamped to the series".
"""

from __future__ import annotations

import json

import pytest
from helpers.cohorts import frame_background, make_cfg, make_toy_cohort

from perforation_d2.data.cohort import load_cohort
from perforation_d2.data.mapper import (
    DSAClipMapper,
    check_clip_frame_times,
    check_input_config,
    clip_indices,
)
from perforation_d2.data.register import cohort_dataset_dicts
from perforation_d2.errors import DSAInputError


def test_4_fps_slots_are_a_second_apart():
    # 250 ms frames, 4 s over 5 slots: slots 1000 ms = 4 frames apart.
    assert clip_indices(10, 40, 5, 250.0, 4000.0) == [2, 6, 10, 14, 18]
    assert clip_indices(1, 40, 5, 250.0, 4000.0) == [0, 0, 1, 5, 9]  # clamped at the start
    assert clip_indices(38, 40, 5, 250.0, 4000.0) == [30, 34, 38, 39, 39]  # and at the end


def test_half_fps_repeats_frames_and_ties_take_the_earlier():
    # 2000 ms frames, slots 1000 ms apart: slot +-1 falls half-way between two frames.
    assert clip_indices(3, 8, 5, 2000.0, 4000.0) == [2, 2, 3, 3, 4]
    assert clip_indices(0, 8, 5, 2000.0, 4000.0) == [0, 0, 0, 0, 1]
    assert clip_indices(7, 8, 5, 2000.0, 4000.0) == [6, 6, 7, 7, 7]


def test_nearest_frame_off_the_grid():
    # 300 ms frames, centre at 3000 ms, targets 1000..5000 ms: 3.33 -> 3, 6.67 -> 7, 13.33 -> 13, 16.67 -> 17.
    assert clip_indices(10, 30, 5, 300.0, 4000.0) == [3, 7, 10, 13, 17]


def test_an_exact_tie_survives_rounding():
    # 700 / (4 * 2.8) is 62.5 exactly, but 62.50000000000001 in floating point: still a tie.
    assert clip_indices(200, 400, 5, 2.8, 700.0) == [75, 137, 200, 262, 325]


def test_no_span_and_single_frames_are_unchanged():
    assert clip_indices(4, 10, 5, 250.0, 0.0) == [2, 3, 4, 5, 6]
    assert clip_indices(4, 10, 5) == [2, 3, 4, 5, 6]  # the original signature
    assert clip_indices(4, 10, 1, 250.0, 4000.0) == [4]
    assert clip_indices(4, 10, 5, None, 0.0) == [2, 3, 4, 5, 6]  # no frame time needed without a span


@pytest.mark.parametrize("frame_time", [None, 0.0, -5.0, float("nan")])
def test_a_span_without_a_frame_time_is_one_paragraph(frame_time):
    with pytest.raises(DSAInputError) as info:
        clip_indices(2, 10, 5, frame_time, 4000.0, series="series X7")
    message = str(info.value)
    assert message.startswith("series X7: ") and "MODEL.TEMPORAL.CLIP_SPAN_MS" in message
    assert "frame_time_ms" in message and "\n" not in message


@pytest.mark.parametrize("span", [-1.0, float("nan"), float("inf")])
def test_bad_span_is_refused_by_the_config_check(span):
    cfg = make_cfg(5)
    cfg.MODEL.TEMPORAL.CLIP_SPAN_MS = span
    with pytest.raises(DSAInputError, match="MODEL.TEMPORAL.CLIP_SPAN_MS"):
        check_input_config(cfg)


def _toy_dicts(root, frames: int, frame_time_ms: float | None = 250.0) -> list[dict]:
    json_file = make_toy_cohort(root, num_patients=1, frames=frames, positive_patients=[])
    cohort = json.loads(json_file.read_text())
    cohort["videos"][0]["frame_time_ms"] = frame_time_ms
    json_file.write_text(json.dumps(cohort))
    return cohort_dataset_dicts(load_cohort(json_file), json_file.parent)


def test_dataset_dicts_carry_the_series_frame_time(tmp_path):
    assert {d["series_frame_time_ms"] for d in _toy_dicts(tmp_path / "a", 3)} == {250.0}
    assert {d["series_frame_time_ms"] for d in _toy_dicts(tmp_path / "b", 3, None)} == {None}


@pytest.mark.parametrize(("frame_time", "expected"), [(250.0, [1, 3, 5, 7, 9]), (1000.0, [4, 4, 5, 5, 6])])
def test_the_mapped_clip_holds_the_chosen_frames(tmp_path, frame_time, expected):
    # 2 s over 5 slots (500 ms apart): 2 frames apart at 4 fps; at 1 fps each slot +-1 ties -> earlier.
    cfg = make_cfg(5)
    cfg.MODEL.TEMPORAL.CLIP_SPAN_MS = 2000.0
    mapper = DSAClipMapper(cfg, is_train=False)
    dicts = _toy_dicts(tmp_path / "c", 12, frame_time)
    for d in dicts:
        out = mapper(d)
        wanted = clip_indices(d["frame_id"], 12, 5, frame_time, 2000.0)
        assert out["image"][:, 0, 0, 0].tolist() == [frame_background(i) for i in wanted]
    centre = next(d for d in dicts if d["frame_id"] == 5)
    assert mapper(centre)["image"][:, 0, 0, 0].tolist() == [frame_background(i) for i in expected]


def test_a_series_without_frame_time_fails_before_training_and_in_the_mapper(tmp_path):
    dicts = _toy_dicts(tmp_path / "c", 4, None)
    check_clip_frame_times(dicts, 0.0, "toy_train")  # no span: nothing to check
    with pytest.raises(DSAInputError) as info:
        check_clip_frame_times(dicts, 4000.0, "toy_train")
    message = str(info.value)
    assert message.startswith("toy_train: video 1 ") and "MODEL.TEMPORAL.CLIP_SPAN_MS = 4000" in message
    cfg = make_cfg(5)
    cfg.MODEL.TEMPORAL.CLIP_SPAN_MS = 4000.0
    with pytest.raises(DSAInputError, match=r"video 1 .*MODEL\.TEMPORAL\.CLIP_SPAN_MS"):
        DSAClipMapper(cfg, is_train=True)(dicts[0])
    check_clip_frame_times(_toy_dicts(tmp_path / "d", 4), 4000.0, "toy_train")  # with a frame time: fine


def test_a_one_frame_series_needs_no_frame_time():
    # Every slot is the one frame whatever the timing (the hard synth has such series).
    assert clip_indices(0, 1, 5, None, 4000.0) == [0, 0, 0, 0, 0]
    check_clip_frame_times([{"series_file_names": ["a.png"], "series_frame_time_ms": None}], 4000.0)
    with pytest.raises(DSAInputError, match="has no frame time"):
        check_clip_frame_times([{"series_file_names": ["a.png", "b.png"], "series_frame_time_ms": None}], 4000.0)
