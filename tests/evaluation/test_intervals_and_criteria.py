"""Small planted-bug guards: the interval level, the box-level centre criterion's borders.

Expected values are worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.metric_cases import GT, make_cohort, pred, quiet_metrics

from perforation_d2.evaluation.bootstrap import percentile_interval
from perforation_d2.evaluation.matching import centre_overlap_rows


def test_the_95_percent_interval_cuts_2_5_percent_on_each_side():
    values = np.arange(101, dtype=np.float64)  # percentiles of 0..100 are the numbers themselves
    interval = percentile_interval(values)
    assert (interval.low, interval.high) == pytest.approx((2.5, 97.5), abs=1e-9)
    narrower = percentile_interval(values, level=0.9)
    assert (narrower.low, narrower.high) == pytest.approx((5.0, 95.0), abs=1e-9)


def test_box_level_centre_criterion_includes_the_borders():
    gt = np.array([[40.0, 40.0, 20.0, 20.0]])  # x 40..60, y 40..60, centre (50, 50)
    on_corner = np.array([[55.0, 55.0, 10.0, 10.0]])  # centre (60, 60): GT's corner; GT centre outside it
    outside = np.array([[55.5, 55.0, 10.0, 10.0]])  # centre (60.5, 60)
    assert centre_overlap_rows(on_corner, gt).tolist() == [True]
    assert centre_overlap_rows(gt, on_corner).tolist() == [True]
    assert centre_overlap_rows(outside, gt).tolist() == [False]


@pytest.mark.parametrize(("box", "hit"), [((55, 55, 10, 10), 1.0), ((55.5, 55, 10, 10), 0.0)])
def test_metrics_count_a_detection_centred_on_the_gt_border(box, hit):
    # One positive series (GT on its frame) and one negative; the positive's detection scores 0.9,
    # the negative's 0.1, so the Youden threshold is 0.9 and keeps exactly the positive's box.
    cohort = make_cohort([[[GT]], [[]]])
    metrics = quiet_metrics(cohort, [pred(0, 0, box, 0.9), pred(1, 0, (0, 0, 10, 10), 0.1)])
    assert metrics["threshold"] == 0.9
    assert metrics["precision_center"] == hit and metrics["recall_center"] == hit
    assert metrics["precision_iou50"] == 0.0  # IoU 25 / 475: only the centre criterion can hit
