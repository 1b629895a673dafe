"""Series optimisation (SPEC section 3) on hand-made series."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perforation_d2.evaluation import Detection, optimize_series
from perforation_d2.evaluation.series_optimization import centres_overlap, trajectories


def det(x: float, y: float, w: float, h: float, score: float) -> Detection:
    return Detection(bbox=(x, y, w, h), score=score)


def kept(series):
    return [None if d is None else (d.bbox, d.score) for d in series]


def test_longer_lower_scoring_trajectory_wins_by_the_length_factor():
    strong = [det(10, 10, 10, 10, 0.9), det(11, 10, 10, 10, 0.9)]  # sum 1.8, weight 3.6
    weak = [det(60, 60, 10, 10, 0.3) for _ in range(5)]  # sum 1.5 (< 1.8), weight 7.5
    series = strong + [None] + weak
    result = optimize_series(series)
    assert result[:3] == [None, None, None]
    assert [d.bbox for d in result[3:]] == [(60, 60, 10, 10)] * 5
    assert [d.score for d in result[3:]] == pytest.approx([0.3] * 5)


def test_links_when_the_small_box_centre_lies_in_the_big_box_either_order():
    big = det(0, 0, 100, 100, 0.5)  # centre (50, 50)
    small = det(80, 80, 10, 10, 0.5)  # centre (85, 85): inside big; big's centre not inside small
    assert centres_overlap(small.bbox, big.bbox) and centres_overlap(big.bbox, small.bbox)
    assert trajectories([big, small]) == [(0, 2)]
    assert trajectories([small, big]) == [(0, 2)]
    assert all(d is not None for d in optimize_series([small, big]))


def test_border_is_inclusive_and_outside_is_not_linked():
    box = det(0, 0, 10, 10, 0.5)
    on_border = det(5, 8, 4, 4, 0.5)  # centre (7, 10): on box's bottom border
    outside = det(5, 8.5, 4, 4, 0.5)  # centre (7, 10.5); box's centre (5, 5) not inside [5, 9]x[8.5, 12.5]
    assert trajectories([box, on_border]) == [(0, 2)]
    assert trajectories([box, outside]) == [(0, 1), (1, 2)]


def test_a_frame_without_detection_breaks_a_chain():
    same = det(10, 10, 10, 10, 0.5)
    series = [same, same, None, same, same, same]
    assert trajectories(series) == [(0, 2), (3, 6)]
    result = optimize_series(series)
    assert result[:3] == [None, None, None] and all(d is not None for d in result[3:])


def test_unlinked_neighbours_start_a_new_trajectory():
    series = [det(0, 0, 10, 10, 0.9), det(50, 50, 10, 10, 0.2), det(51, 50, 10, 10, 0.2)]
    assert trajectories(series) == [(0, 1), (1, 3)]
    # weights 0.9 * 1 = 0.9 vs 0.4 * 2 = 0.8: the single strong detection wins.
    assert kept(optimize_series(series)) == [((0, 0, 10, 10), 0.9), None, None]


def test_survivors_get_the_mean_score_and_the_input_is_untouched():
    series = [det(10, 10, 10, 10, 0.9), det(12, 10, 10, 10, 0.6), det(14, 10, 10, 10, 0.9), None,
              det(90, 90, 5, 5, 0.95)]
    before = list(series)
    result = optimize_series(series)
    assert [d.score for d in result[:3]] == pytest.approx([0.8, 0.8, 0.8])
    assert [d.bbox for d in result[:3]] == [d.bbox for d in series[:3]]
    assert result[3:] == [None, None]
    assert series == before and series[0].score == 0.9


def test_series_without_detection_and_empty_series():
    assert optimize_series([None, None, None]) == [None, None, None]
    assert optimize_series([]) == []


def test_single_frame_series_keeps_its_detection():
    assert kept(optimize_series([det(1, 2, 3, 4, 0.7)])) == [((1, 2, 3, 4), 0.7)]


def test_ties_keep_the_earliest_trajectory():
    first = [det(0, 0, 10, 10, 0.5), det(0, 0, 10, 10, 0.5)]
    second = [det(50, 50, 10, 10, 0.5), det(50, 50, 10, 10, 0.5)]
    result = optimize_series(first + [None] + second)
    assert [d is not None for d in result] == [True, True, False, False, False]


boxes = st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(1, 30)
).map(lambda b: tuple(float(v) for v in b))
frames = st.lists(
    st.one_of(st.none(), st.builds(Detection, bbox=boxes, score=st.floats(0, 1, allow_nan=False))),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(frames)
def test_survivors_form_the_heaviest_linked_run(series):
    result = optimize_series(series)
    survivors = [t for t, d in enumerate(result) if d is not None]
    if all(d is None for d in series):
        assert survivors == []
        return
    start, end = survivors[0], survivors[-1] + 1
    assert survivors == list(range(start, end))
    for t in range(start + 1, end):
        assert centres_overlap(series[t - 1].bbox, series[t].bbox)
    # Maximal: the run cannot be extended on either side.
    for t in (start - 1, end):
        if 0 <= t < len(series) and series[t] is not None:
            neighbour = series[start] if t < start else series[end - 1]
            assert not centres_overlap(series[t].bbox, neighbour.bbox)
    scores = [series[t].score for t in range(start, end)]
    weight = sum(scores) * len(scores)
    for s, e in trajectories(series):
        assert sum(series[t].score for t in range(s, e)) * (e - s) <= weight
    assert {result[t].score for t in survivors} == {sum(scores) / len(scores)}
