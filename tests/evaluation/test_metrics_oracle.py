"""``evaluate`` against the independent oracle of tests/helpers/oracle.py, on noisy random cases.

The command tests compare ``evaluate``/``compare``/``predict`` with ``compute_series_metrics``,
which shares their pipeline; this file checks that pipeline itself against code that shares none
of it (images listed out of frame order, ties, series without detections, SO on and off).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.metric_cases import random_case
from helpers.oracle import independent_metrics

from perforation_d2.cli import main

KEYS = ("AUC", "threshold", "sensitivity", "specificity", "sens_at_95spec", "precision_iou50", "recall_iou50",
        "precision_center", "recall_center", "num_series", "num_positive_series")


@pytest.mark.parametrize("seed", [0, 3, 11])
@pytest.mark.parametrize("series_optimization", [True, False])
def test_evaluate_matches_the_independent_oracle(tmp_path, capsys, seed, series_optimization):
    cohort, predictions = random_case(seed=seed, num_series=14, num_frames=6)
    order = np.random.default_rng(seed).permutation(len(cohort["images"]))
    cohort["images"] = [cohort["images"][i] for i in order]  # listed out of frame order
    gt = tmp_path / "cohort.json"
    gt.write_text(json.dumps(cohort))
    pred_file = tmp_path / "pred.json"
    pred_file.write_text(json.dumps(predictions))
    extra = [] if series_optimization else ["--no-series-optimization"]
    assert main(["evaluate", "--gt", str(gt), "--pred", str(pred_file), "--out", str(tmp_path / "out"), *extra]) == 0
    capsys.readouterr()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    expected = independent_metrics(cohort, predictions, series_optimization)
    assert metrics["series_scores"] == pytest.approx(expected["series_scores"])
    for key in KEYS:
        assert metrics[key] == pytest.approx(expected[key]), key
