"""With a fixed seed on CPU, two runs give identical losses, weights and predictions."""

from __future__ import annotations

import json

import torch
from helpers.cohorts import make_toy_cohort
from helpers.training import (
    QUICK_TEMPORAL,
    load_train_net,
    one_thread_and_restored_determinism,
    read_metrics,
    state_dicts_equal,
    tiny_opts,
    train_args,
)

MAX_ITER = 3


def _run(train_net, cohort_dir, out, max_iter=MAX_ITER, seed=0):
    # Augmentation on: the test also covers the mapper's random transforms. No score threshold:
    # a barely trained model's scores are low, and every frame should have a prediction.
    opts = tiny_opts(cohort_dir, out, max_iter, "SEED", str(seed), "INPUT.DSA_AUG.ENABLED", "True",
                     "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")
    with one_thread_and_restored_determinism():
        train_net.main(train_args(["--config-file", QUICK_TEMPORAL, *opts]))
    losses = {i: {k: v for k, v in m.items() if k.startswith(("loss", "total_loss", "lr"))}
              for i, m in read_metrics(out).items() if "total_loss" in m}
    predictions = json.loads((out / "inference" / cohort_dir.name / "predictions.json").read_text())
    return losses, predictions


def test_two_seeded_runs_are_identical(tmp_path):
    cohort_dir = make_toy_cohort(tmp_path / "det", num_patients=2, frames=3).parent
    train_net = load_train_net()
    losses_a, predictions_a = _run(train_net, cohort_dir, tmp_path / "a")
    losses_b, predictions_b = _run(train_net, cohort_dir, tmp_path / "b")

    assert sorted(losses_a) == list(range(MAX_ITER))
    assert losses_a == losses_b  # bit-identical floats, every loss term and the LR
    weights_a = torch.load(tmp_path / "a" / "model_final.pth", weights_only=True)["model"]
    weights_b = torch.load(tmp_path / "b" / "model_final.pth", weights_only=True)["model"]
    assert state_dicts_equal(weights_a, weights_b) == []
    assert len(predictions_a) == 6  # one (top) detection per frame
    assert predictions_a == predictions_b

    # The comparison is sharp: another seed changes the very first loss.
    losses_c, _ = _run(train_net, cohort_dir, tmp_path / "c", max_iter=1, seed=1)
    assert losses_c[0]["total_loss"] != losses_a[0]["total_loss"]
