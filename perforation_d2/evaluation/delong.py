"""DeLong's test for two correlated ROC AUCs, in the fast form of Sun & Xu (2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of AUCs computed on the same
cases from the "placement values" of each positive among the negatives and vice versa; Sun & Xu
(IEEE Signal Processing Letters 21(11), 2014) obtain those placements from mid-ranks, in
O(N log N) instead of O(m n). The statistic is ``z = (AUC_a - AUC_b) / sd(AUC_a - AUC_b)``
with a two-sided normal p-value, as the R package pROC's ``roc.test(method="delong",
paired=TRUE)``; the confidence interval is that of ``AUC_a - AUC_b``.

AUCs are ``P(score_positive > score_negative) + 0.5 P(tie)``: higher scores mean "positive",
there is no automatic direction flip (pROC's ``direction="<"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import norm, rankdata

from ..errors import DSAInputError


def _check_inputs(y_true: Sequence[int], scores: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    rows = [np.asarray(row, dtype=np.float64) for row in scores]
    if y.ndim != 1 or any(row.shape != y.shape for row in rows):
        raise DSAInputError(
            "delong_test: y_true and every score list must be one-dimensional and of the same length "
            f"(got labels of shape {y.shape} and scores of shapes {[row.shape for row in rows]})."
        )
    matrix = np.stack(rows)
    if not np.isin(y, (0, 1)).all():
        raise DSAInputError("delong_test: y_true must contain only 0 (negative) and 1 (positive).")
    if not np.isfinite(matrix).all():
        raise DSAInputError("delong_test: scores must be finite numbers (found NaN or infinity).")
    positives = int(np.count_nonzero(y == 1))
    if positives < 2 or len(y) - positives < 2:
        raise DSAInputError(
            f"delong_test: needs at least 2 positive and 2 negative cases to estimate the AUC variance "
            f"(got {positives} positive, {len(y) - positives} negative)."
        )
    return y.astype(bool), matrix


def delong_covariance(y_true: Sequence[int], scores: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of every row of ``scores`` and their DeLong covariance matrix.

    ``scores`` has shape (K, N): K classifiers scored on the same N cases. Returns ``(aucs (K,),
    covariance (K, K))``.
    """
    positive, matrix = _check_inputs(y_true, scores)
    pos = matrix[:, positive]
    neg = matrix[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    rank_pos = rankdata(pos, axis=1)  # mid-ranks among positives
    rank_neg = rankdata(neg, axis=1)
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    # Placement of each positive among the negatives, and of each negative among the positives.
    v_pos = (rank_all[:, :m] - rank_pos) / n
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m
    covariance = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, covariance


def delong_test(
    y_true: Sequence[int], scores_a: Sequence[float], scores_b: Sequence[float], level: float = 0.95
) -> dict[str, float]:
    """Paired two-sided DeLong test of ``AUC_a == AUC_b``.

    Returns ``{"auc_a", "auc_b", "z", "p_value", "ci_low", "ci_high"}`` where the interval is the
    ``level`` confidence interval of ``auc_a - auc_b``. Identical curves give ``z = 0``,
    ``p = 1``. Bad input raises :class:`~perforation_d2.errors.DSAInputError`.
    """
    aucs, covariance = delong_covariance(y_true, [scores_a, scores_b])
    difference = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1])
    sd = math.sqrt(variance) if variance > 0 else 0.0
    if sd > 0:
        z = difference / sd
        p_value = float(2.0 * norm.sf(abs(z)))
    elif difference == 0.0:
        z, p_value = 0.0, 1.0
    else:  # Both AUCs are estimated without variance (e.g. perfect vs constant scores).
        z, p_value = math.copysign(math.inf, difference), 0.0
    half_width = float(norm.ppf(0.5 + level / 2.0)) * sd
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "z": float(z),
        "p_value": p_value,
        "ci_low": difference - half_width,
        "ci_high": difference + half_width,
    }
