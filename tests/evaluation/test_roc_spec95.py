"""The 95%-specificity point and the curve that ``roc_statistics`` returns, on a hand-made case.

Kills the mutants that survived mutation testing of evaluation/roc.py: the FPR bound made strict,
the spec95 threshold / specificity fields, and the curve arrays (every threshold kept). Worked by
hand: 20 negatives score 0.01 .. 0.20 and 5 positives 0.15, 0.20, 0.30, 0.40, 0.50. At threshold
0.20 one negative of 20 is at or above it: FPR = 0.05 exactly, allowed (<=), with 4 of 5 positives;
a strict bound would stop at 0.30 (3 of 5).
"""

from __future__ import annotations

import numpy as np
import pytest

from perforation_d2.evaluation.roc import roc_statistics

NEGATIVES = [round(0.01 * k, 2) for k in range(1, 21)]
POSITIVES = [0.15, 0.20, 0.30, 0.40, 0.50]


def test_spec95_point_allows_fpr_of_exactly_five_percent():
    labels = np.array([0] * len(NEGATIVES) + [1] * len(POSITIVES))
    scores = np.array(NEGATIVES + POSITIVES)
    roc = roc_statistics(labels, scores)
    assert roc.sens_at_95spec == pytest.approx(0.8)
    assert roc.spec95_threshold == pytest.approx(0.20)
    assert roc.spec95_specificity == pytest.approx(0.95)
    # Youden J: 0.6 at 0.30, 0.8 - 0.05 = 0.75 at 0.20, 1 - 0.3 = 0.7 at 0.15.
    assert (roc.threshold, roc.sensitivity, roc.specificity) == pytest.approx((0.20, 0.8, 0.95))
    # The full curve, one point per distinct score plus the (0, 0) start, none dropped: 23 distinct
    # scores (0.15 and 0.20 are shared by both classes).
    assert len(roc.fpr) == len(roc.tpr) == 24
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
