"""Reading the AUC over training from a metrics.json as trainings leave it, and drawing it."""

from __future__ import annotations

import json

from perforation_d2.evaluation.plots import learning_curve_png
from perforation_d2.experiments.diagnostics import read_auc_points


def test_metrics_json_of_a_killed_and_resumed_training(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [
        {"iteration": 4, "total_loss": 1.0},  # a logging line, no evaluation
        {"iteration": 9, "dsa/AUC": 0.61, "total_loss": 0.9},  # after 10 iterations
        {"iteration": 19, "dsa/AUC": float("nan")},  # one class: undefined, skipped
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    text += '{"iteration": 29, "dsa/AU'  # cut short by a kill
    text += "\n" + json.dumps({"iteration": 9, "dsa/AUC": 0.64}) + "\n"  # resumed: the later line wins
    text += json.dumps({"iteration": 40, "dsa/AUC": 0.7}) + "\n"  # the final evaluation, at MAX_ITER
    path.write_text(text)
    assert read_auc_points(path, max_iter=40) == {10: 0.64, 40: 0.7}
    assert read_auc_points(tmp_path / "absent.json", max_iter=40) == {}


def test_learning_curve_png_draws_members_and_fractions():
    by_iteration = learning_curve_png([("tconv", [10, 20], [0.6, 0.7], [None, None])], xlabel="iterations",
                                      members={"tconv": [([10, 20], [0.5, 0.8]), ([10, 20], [0.7, 0.6])]})
    by_fraction = learning_curve_png([("single", [0.5, 1.0], [0.6, 0.7], [0.1, None])])
    for png in (by_iteration, by_fraction):
        assert png.startswith(b"\x89PNG")
