"""DeLong's test against the R package pROC, and the patient-level bootstrap against scikit-learn."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from perforation_d2.errors import DSAInputError
from perforation_d2.evaluation import delong_test
from perforation_d2.evaluation.bootstrap import (
    bootstrap_auc_intervals,
    patient_resample_weights,
    weighted_aucs,
)


def load_asah():
    """pROC's aSAH data (tests/data/asah.csv, see its header): outcome Poor = 1."""
    path = Path(__file__).parent / "asah.csv"
    with path.open() as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    y = np.array([row["outcome"] == "Poor" for row in rows], dtype=int)
    return y, {name: np.array([float(row[name]) for row in rows]) for name in ("s100b", "wfns", "ndka")}


# pROC's tests/testthat/test-roc.test.R ("roc.test statistic and p are as expected with defaults"):
# t1 <- roc.test(r.wfns, r.s100b); t2 <- roc.test(r.wfns, r.ndka); t3 <- roc.test(r.ndka, r.s100b),
# paired DeLong, two-sided; conf.int is the 95% interval of AUC(first) - AUC(second).
PROC_EXPECTED = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
]
# pROC's tests/testthat/test-auc.R: expected.s100b$full, expected.wfns$full, expected.ndka$full.
PROC_AUC = {"s100b": 0.731368563685637, "wfns": 0.823678861788618, "ndka": 0.611957994579946}


def test_asah_data_is_complete():
    y, scores = load_asah()
    assert len(y) == 113 and int(y.sum()) == 41
    assert all(len(v) == 113 for v in scores.values())


@pytest.mark.parametrize(("a", "b", "z", "p", "ci_low", "ci_high"), PROC_EXPECTED)
def test_delong_reproduces_proc_on_asah(a, b, z, p, ci_low, ci_high):
    y, scores = load_asah()
    result = delong_test(y, scores[a], scores[b])
    assert result["auc_a"] == pytest.approx(PROC_AUC[a], rel=1e-12)
    assert result["auc_b"] == pytest.approx(PROC_AUC[b], rel=1e-12)
    assert result["z"] == pytest.approx(z, rel=1e-9)
    assert result["p_value"] == pytest.approx(p, rel=1e-9)
    assert result["ci_low"] == pytest.approx(ci_low, rel=1e-9)
    assert result["ci_high"] == pytest.approx(ci_high, rel=1e-9)


def test_delong_is_antisymmetric_and_matches_sklearn_aucs():
    y, scores = load_asah()
    forward = delong_test(y, scores["s100b"], scores["wfns"])
    backward = delong_test(y, scores["wfns"], scores["s100b"])
    assert forward["z"] == pytest.approx(-backward["z"]) and forward["p_value"] == pytest.approx(backward["p_value"])
    assert forward["ci_low"] == pytest.approx(-backward["ci_high"])
    assert forward["auc_a"] == pytest.approx(roc_auc_score(y, scores["s100b"]), abs=1e-15)


def test_identical_curves_give_z_zero_and_p_one():
    y, scores = load_asah()
    result = delong_test(y, scores["wfns"], scores["wfns"])
    assert (result["z"], result["p_value"], result["ci_low"], result["ci_high"]) == (0.0, 1.0, 0.0, 0.0)


def test_delong_refuses_bad_input():
    with pytest.raises(DSAInputError, match="at least 2 positive"):
        delong_test([1, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
    with pytest.raises(DSAInputError, match="only 0"):
        delong_test([1, 2, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
    with pytest.raises(DSAInputError, match="same length"):
        delong_test([1, 1, 0, 0], [0.1, 0.2, 0.3], [0.4, 0.3, 0.2, 0.1])
    with pytest.raises(DSAInputError, match="finite"):
        delong_test([1, 1, 0, 0], [0.1, float("nan"), 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])


def test_patient_resampling_keeps_a_patients_series_together():
    patients = ["b", "a", "b", "c", "a", "d"]
    weights = patient_resample_weights(patients, n_resamples=50, seed=3)
    assert weights.shape == (50, 6)
    assert np.array_equal(weights[:, 0], weights[:, 2]) and np.array_equal(weights[:, 1], weights[:, 4])
    # Every resample draws four patients (sorted: a, b, c, d), each bringing all its series.
    assert np.array_equal(weights[:, [1, 0, 3, 5]].sum(axis=1), np.full(50, 4))
    draws = np.random.default_rng(3).integers(0, 4, size=(50, 4))
    assert np.array_equal(weights[:, 3], (draws == 2).sum(axis=1))


def test_weighted_aucs_equal_sklearn_on_explicitly_repeated_series():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40) + 0.3 * labels, 1)  # rounding makes ties
    patients = [f"p{i // 2}" for i in range(40)]
    weights = patient_resample_weights(patients, n_resamples=30, seed=1)
    aucs = weighted_aucs(labels, scores, weights)
    for row, auc in zip(weights, aucs):
        repeated = np.repeat(np.arange(40), row)
        expected = roc_auc_score(labels[repeated], scores[repeated]) if len(set(labels[repeated])) == 2 else np.nan
        np.testing.assert_allclose(auc, expected, rtol=1e-12)


def test_bootstrap_interval_contains_the_auc_and_counts_single_class_resamples():
    y, scores = load_asah()
    patients = [str(i) for i in range(len(y))]
    (interval,) = bootstrap_auc_intervals(y, [scores["wfns"]], patients, n_resamples=300, seed=0)
    assert interval.low < PROC_AUC["wfns"] < interval.high and interval.high - interval.low < 0.2
    assert interval.resamples == 300 and interval.skipped == 0
    # One positive among few patients: many resamples draw no positive at all.
    (sparse,) = bootstrap_auc_intervals(np.array([1, 0, 0, 0]), [np.array([0.9, 0.1, 0.2, 0.3])],
                                        ["a", "b", "c", "d"], n_resamples=200, seed=0)
    assert sparse.skipped > 0 and sparse.resamples + sparse.skipped == 200
    assert sparse.low == sparse.high == 1.0
