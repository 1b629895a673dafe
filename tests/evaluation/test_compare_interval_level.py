"""The AUC interval that ``compare`` labels 95% is the 2.5-97.5 percentile interval of its bootstrap.

The expected interval is recomputed here from the documented resampling protocol (patients sorted by
id, ``default_rng(seed).integers(0, P, size=(n, P))``, a drawn patient brings all its series) with
scikit-learn's AUC on the explicitly repeated series and numpy's percentiles: a 90% interval (or
any other level) printed under the 95% label fails.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.metric_cases import GT, make_cohort, pred
from sklearn.metrics import roc_auc_score

from perforation_d2.cli import main

RESAMPLES = 300
SEED = 7
# One frame per series (series optimisation keeps a lone detection with its own score), two
# series per patient; positives carry the GT box and are detected on it.
LABELS = [1, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0]
SCORES_A = [0.9, 0.3, 0.7, 0.6, 0.4, 0.8, 0.2, 0.5, 0.65, 0.1, 0.75, 0.35, 0.55, 0.45]
SCORES_B = [0.6, 0.5, 0.8, 0.2, 0.3, 0.9, 0.4, 0.7, 0.45, 0.15, 0.25, 0.85, 0.5, 0.55]


def _write_case(tmp_path):
    patients = [f"pat{i // 2:02d}" for i in range(len(LABELS))]
    cohort = make_cohort([[[GT]] if label else [[]] for label in LABELS], patients=patients)
    files = []
    for name, scores in (("a", SCORES_A), ("b", SCORES_B)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps([pred(v, 0, GT if LABELS[v] else (0, 0, 10, 10), s) for v, s in enumerate(scores)]))
        files.append(path)
    gt = tmp_path / "cohort.json"
    gt.write_text(json.dumps(cohort))
    return gt, files, patients


def _expected_interval(labels, scores, patients, level):
    labels, scores = np.asarray(labels), np.asarray(scores)
    unique = sorted(set(patients))
    series_of = {p: [i for i, q in enumerate(patients) if q == p] for p in unique}
    draws = np.random.default_rng(SEED).integers(0, len(unique), size=(RESAMPLES, len(unique)))
    aucs = []
    for row in draws:
        chosen = [i for d in row for i in series_of[unique[d]]]
        if len(set(labels[chosen].tolist())) == 2:
            aucs.append(roc_auc_score(labels[chosen], scores[chosen]))
    tail = (1 - level) / 2 * 100
    return np.percentile(aucs, [tail, 100 - tail]).tolist(), len(aucs)


def test_compare_reports_the_95_percent_percentile_interval(tmp_path, capsys):
    gt, (pred_a, pred_b), patients = _write_case(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", "--gt", str(gt), "--pred", str(pred_a), "--pred", str(pred_b), "--name", "A",
                 "--name", "B", "--out", str(out), "--bootstrap", str(RESAMPLES), "--seed", str(SEED)]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["bootstrap"]["level"] == 0.95
    table = (out / "table.md").read_text()
    for entry, scores in zip(report["models"], (SCORES_A, SCORES_B)):
        assert entry["AUC"] == pytest.approx(roc_auc_score(LABELS, scores))
        expected, usable = _expected_interval(LABELS, scores, patients, 0.95)
        assert entry["AUC_ci95"] == pytest.approx(expected, abs=1e-12)
        assert entry["bootstrap_resamples_used"] == usable
        assert f"({expected[0]:.3f}-{expected[1]:.3f})" in table
        narrower, _ = _expected_interval(LABELS, scores, patients, 0.90)
        assert narrower != pytest.approx(expected, abs=1e-6)  # the case tells 90% from 95%
    median = np.median([SCORES_A, SCORES_B], axis=0)
    expected, _ = _expected_interval(LABELS, median, patients, 0.95)
    assert report["ensemble"]["AUC_ci95"] == pytest.approx(expected, abs=1e-12)
