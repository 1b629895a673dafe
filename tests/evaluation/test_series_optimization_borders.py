"""Series optimisation's link criterion on boxes that are not square and not on the diagonal.

Kills the mutants that survived mutation testing (scripts/mutation_test.sh): x and y (or width and
height) swapped, and borders made exclusive. Each case is worked out by hand: ``other`` spans
x 20..32, y 40..54 (x, y, w, h = 20, 40, 12, 14); a centre exactly on any of its four borders is
inside (borders inclusive), a centre 0.5 px beyond is outside.
"""

from __future__ import annotations

import pytest

from perforation_d2.evaluation.series_optimization import (
    Detection,
    centre_in_box,
    centres_overlap,
    optimize_series,
)

OTHER = (20.0, 40.0, 12.0, 14.0)


def _box_centred(cx: float, cy: float) -> tuple[float, float, float, float]:
    w, h = 4.0, 6.0  # not square: w and h must not be swapped
    return (cx - w / 2, cy - h / 2, w, h)


@pytest.mark.parametrize(("cx", "cy", "inside"), [
    (20.0, 47.0, True), (32.0, 47.0, True), (26.0, 40.0, True), (26.0, 54.0, True),  # on each border
    (20.0, 40.0, True), (32.0, 54.0, True),  # on two corners
    (19.5, 47.0, False), (32.5, 47.0, False), (26.0, 39.5, False), (26.0, 54.5, False),  # just beyond
    (47.0, 26.0, False),  # x and y swapped: outside
])
def test_centre_in_box_borders_inclusive(cx, cy, inside):
    assert centre_in_box(_box_centred(cx, cy), OTHER) is inside


def test_centres_overlap_is_either_direction():
    small_inside = _box_centred(21.0, 41.0)  # its centre inside OTHER, OTHER's centre (26, 47) not in it
    assert not centre_in_box(OTHER, small_inside) and centres_overlap(small_inside, OTHER)
    assert centres_overlap(OTHER, small_inside)
    far = (100.0, 0.0, 4.0, 6.0)
    assert not centres_overlap(far, OTHER) and not centres_overlap(OTHER, far)


def test_detections_touching_at_a_border_form_one_trajectory():
    # Frames 0 and 1 link only through a centre on OTHER's right border (x = 32); frame 2 is
    # alone. Trajectory [0, 1] weighs (0.4 + 0.5) * 2 = 1.8 > 0.8, so it survives with mean 0.45.
    detections = [Detection(OTHER, 0.4), Detection(_box_centred(32.0, 50.0), 0.5), None, Detection(OTHER, 0.8)]
    optimized = optimize_series(detections)
    assert [d.score if d else None for d in optimized] == [pytest.approx(0.45), pytest.approx(0.45), None, None]
