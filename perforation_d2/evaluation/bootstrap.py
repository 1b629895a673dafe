"""Patient-level bootstrap confidence intervals of series-level AUCs.

A patient can contribute several series, and series of one patient are correlated, so the
resampling unit is the patient: each resample draws as many patients as the cohort has, with
replacement, and a drawn patient brings all of its series (drawn twice: twice over). The AUC of
a resample is the weighted AUC with those multiplicities as weights, which equals scikit-learn's
``roc_auc_score`` on the explicitly repeated series; resamples with a single class are skipped
and counted. The interval is the percentile interval (numpy's default linear interpolation,
R's quantile type 7, as pROC's ``ci.auc(method="bootstrap")``).

Resamples are drawn as ``numpy.random.default_rng(seed).integers(0, P, size=(n, P))`` over the
patients sorted by id, and every model is evaluated on the same resamples (a paired bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK = 256  # resamples evaluated at once (bounds the (chunk, series) work arrays)


def patient_resample_weights(patient_ids: Sequence[str], n_resamples: int, seed: int) -> np.ndarray:
    """Multiplicity of every series in every resample: shape ``(n_resamples, num_series)``."""
    patients, patient_of_series = np.unique(np.asarray(patient_ids, dtype=str), return_inverse=True)
    num_patients = len(patients)
    draws = np.random.default_rng(seed).integers(0, num_patients, size=(n_resamples, num_patients))
    flat = (draws + np.arange(n_resamples)[:, None] * num_patients).ravel()
    counts = np.bincount(flat, minlength=n_resamples * num_patients).reshape(n_resamples, num_patients)
    return counts[:, patient_of_series]


def weighted_aucs(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` for each row of ``weights`` (case multiplicities); NaN for one class.

    ``labels`` and ``scores`` have shape (N,), ``weights`` (B, N). Ties count one half.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    positive = labels[order].astype(bool)
    group_start = np.flatnonzero(np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]]))
    aucs = np.empty(len(weights), dtype=np.float64)
    for begin in range(0, len(weights), _CHUNK):
        w = weights[begin : begin + _CHUNK][:, order].astype(np.float64)
        pos_w = np.where(positive, w, 0.0)
        neg_w = w - pos_w
        pos_group = np.add.reduceat(pos_w, group_start, axis=1)
        neg_group = np.add.reduceat(neg_w, group_start, axis=1)
        neg_below = np.cumsum(neg_group, axis=1) - neg_group
        numerator = np.sum(pos_group * (neg_below + 0.5 * neg_group), axis=1)
        denominator = pos_w.sum(axis=1) * neg_w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs[begin : begin + _CHUNK] = np.where(denominator > 0, numerator / denominator, np.nan)
    return aucs


@dataclass
class BootstrapInterval:
    low: float | None
    high: float | None
    resamples: int  # usable resamples (both classes present)
    skipped: int  # resamples with a single class


def percentile_interval(values: np.ndarray, level: float = 0.95) -> BootstrapInterval:
    """Percentile interval of the finite entries of ``values`` (NaN entries are counted as skipped)."""
    finite = values[np.isfinite(values)]
    skipped = len(values) - len(finite)
    if len(finite) == 0:
        return BootstrapInterval(None, None, 0, skipped)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return BootstrapInterval(float(low), float(high), len(finite), skipped)


def bootstrap_auc_intervals(
    labels: np.ndarray,
    scores_by_model: Sequence[np.ndarray],
    patient_ids: Sequence[str],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[BootstrapInterval]:
    """Paired patient-level bootstrap percentile intervals of the AUC of each score vector."""
    weights = patient_resample_weights(patient_ids, n_resamples, seed)
    labels = np.asarray(labels)
    return [
        percentile_interval(weighted_aucs(labels, np.asarray(scores, dtype=np.float64), weights), level)
        for scores in scores_by_model
    ]
