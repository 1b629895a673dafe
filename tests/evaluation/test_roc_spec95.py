"""The 95%-specificity point and the curve that ``roc_statistics`` returns, on a hand-made case.

Kills the mutants that survived mutation testing of evaluation/roc.py: the FPR bound made strict,
the spec95 threshold / specificity fields, and the curve arrays (every threshold kept). Worked by
hand: 20 negatives score 0.01 .. 0.20 and 4 positives 0.15, 0.30, 0.40, 0.50. At threshold 0.20
one negative of 20 is above: FPR = 0.05 exactly, allowed (<=); the positives >= 0.20 are 3 of 4.
"""

from __future__ import annotations

import numpy as np
import pytest

from perforation_d2.evaluation.roc import roc_statistics

NEGATIVES = [round(0.01 * k, 2) for k in range(1, 21)]
POSITIVES = [0.15, 0.30, 0.40, 0.50]


def test_spec95_point_allows_fpr_of_exactly_five_percent():
    labels = np.array([0] * len(NEGATIVES) + [1] * len(POSITIVES))
    scores = np.array(NEGATIVES + POSITIVES)
    roc = roc_statistics(labels, scores)
    assert roc.sens_at_95spec == pytest.approx(0.75)
    assert roc.spec95_threshold == pytest.approx(0.20)
    assert roc.spec95_specificity == pytest.approx(0.95)
    # Youden: at 0.30 (TPR 3/4, FPR 0) J = 0.75; at 0.15 (TPR 1, FPR 6/20) J = 0.70.
    assert (roc.threshold, roc.sensitivity, roc.specificity) == pytest.approx((0.30, 0.75, 1.0))
    # The full curve, one point per distinct score plus the start (no point dropped): 24 distinct
    # scores (0.15 appears twice) -> 23 thresholds + the (0, 0) start.
    assert len(roc.fpr) == len(roc.tpr) == 24
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
