"""train_net.py end to end in-process: training, evaluation, BestCheckpointer, --eval-only."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.evaluation.testing import flatten_results_dict
from helpers.cohorts import make_toy_cohort
from helpers.training import (
    QUICK_TEMPORAL,
    load_train_net,
    one_thread_and_restored_determinism,
    read_metrics,
    tiny_opts,
    train_args,
)

from perforation_d2.config import add_perforation_config
from perforation_d2.engine import OperatingPoint
from perforation_d2.engine.trainer import best_metric_key
from perforation_d2.errors import DSAInputError

MAX_ITER = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four iterations with an evaluation every two (BestCheckpointer), on 2 series of 3 frames."""
    root = tmp_path_factory.mktemp("train_net")
    cohort_dir = make_toy_cohort(root / "tnc", num_patients=2, frames=3).parent
    out = root / "out"
    train_net = load_train_net()
    opts = tiny_opts(cohort_dir, out, MAX_ITER, "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2")
    with one_thread_and_restored_determinism():
        train_net.main(train_args(["--config-file", QUICK_TEMPORAL, *opts]))
    return train_net, cohort_dir, out


def test_training_writes_metrics_checkpoints_and_evaluations(trained):
    _, _, out = trained
    metrics = read_metrics(out)
    assert sorted(i for i, m in metrics.items() if "total_loss" in m) == list(range(MAX_ITER))
    assert all(torch.isfinite(torch.tensor(m["total_loss"])) for m in metrics.values() if "total_loss" in m)
    # Evaluations after 2 iterations (at iteration index 1) and after training (Detectron2 records
    # the final one at index MAX_ITER), with the series metrics.
    evaluated = sorted(i for i, m in metrics.items() if "dsa/AUC" in m)
    assert evaluated == [1, MAX_ITER]
    assert metrics[MAX_ITER]["dsa/num_series"] == 2 and metrics[MAX_ITER]["dsa/num_positive_series"] == 1
    for name in ("metrics.json", "predictions.json", "series_scores.json"):
        assert (out / "inference" / "tnc" / name).is_file(), name
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth", "model_best.pth"):
        assert (out / name).is_file(), name


def test_checkpoints_hold_the_full_training_state_and_load_with_weights_only(trained):
    _, _, out = trained
    final = torch.load(out / "model_final.pth", weights_only=True)
    # Saved after the final evaluation, once every iteration completed.
    assert final["iteration"] == MAX_ITER - 1
    assert final["trainer"]["iteration"] == MAX_ITER
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == MAX_ITER
    assert "momentum_buffer" in next(iter(final["trainer"]["_trainer"]["optimizer"]["state"].values()))
    assert set(final["rng_states"]) >= {"python", "numpy", "torch"}
    assert any(key.endswith("loss_normalizer") for key in final["loss_normalizers"])
    assert "operating_point" in final


def test_best_checkpointer_keeps_the_best_evaluation(trained):
    _, _, out = trained
    metrics = read_metrics(out)
    aucs = {i: metrics[i]["dsa/AUC"] for i in (1, MAX_ITER)}
    best_iter = 1 if aucs[1] >= aucs[MAX_ITER] else MAX_ITER  # ties keep the first
    best = torch.load(out / "model_best.pth", weights_only=True)
    assert best["iteration"] == best_iter
    # The best score travels with the trainer state, for --resume.
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["trainer"]["hooks"]["ResumableBestCheckpointer"] == {"best_metric": aucs[best_iter], "best_iter": best_iter}
    same_weights = "model_0000001.pth" if best_iter == 1 else "model_final.pth"
    expected = torch.load(out / same_weights, weights_only=True)["model"]
    assert all(torch.equal(best["model"][k], v) for k, v in expected.items())


def test_eval_only_reproduces_the_final_evaluation(trained, tmp_path):
    train_net, cohort_dir, out = trained
    opts = tiny_opts(cohort_dir, tmp_path, MAX_ITER, "MODEL.WEIGHTS", str(out / "model_final.pth"))
    with one_thread_and_restored_determinism():
        results = train_net.main(train_args(["--config-file", QUICK_TEMPORAL, "--eval-only", *opts]))
    written = json.loads((tmp_path / "inference" / "tnc" / "metrics.json").read_text())
    during_training = json.loads((out / "inference" / "tnc" / "metrics.json").read_text())
    assert written == during_training
    assert results["dsa"]["num_series"] == 2
    predictions = json.loads((tmp_path / "inference" / "tnc" / "predictions.json").read_text())
    assert predictions == json.loads((out / "inference" / "tnc" / "predictions.json").read_text())


def test_bad_config_is_one_clear_error(tmp_path, capsys):
    train_net = load_train_net()
    assert train_net.cli(["--config-file", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: config file not found" in capsys.readouterr().err
    assert train_net.cli(["--config-file", QUICK_TEMPORAL, "SOLVER.NO_SUCH_KEY", "1"]) == 2
    assert "NO_SUCH_KEY" in capsys.readouterr().err
    assert train_net.cli(["--config-file", QUICK_TEMPORAL, "--eval-only", "OUTPUT_DIR", str(tmp_path)]) == 2
    assert "--eval-only needs trained weights" in capsys.readouterr().err


def test_a_new_training_never_runs_into_an_existing_one(trained, capsys):
    train_net, cohort_dir, out = trained
    before = (out / "metrics.json").read_bytes()
    assert train_net.cli(["--config-file", QUICK_TEMPORAL, *tiny_opts(cohort_dir, out, MAX_ITER)]) == 2
    assert "already holds a training" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == before


def test_sync_bn_is_refused_for_cpu_workers(tmp_path, capsys):
    train_net = load_train_net()
    argv = ["--num-gpus", "2", "--config-file", QUICK_TEMPORAL, "MODEL.DEVICE", "cpu", "MODEL.FPN.NORM", "SyncBN",
            "OUTPUT_DIR", str(tmp_path)]
    assert train_net.cli(argv) == 2
    assert "MODEL.FPN.NORM is SyncBN" in capsys.readouterr().err


def test_operating_points_youden_and_spec95():
    youden = OperatingPoint("youden")
    assert not youden.update({"threshold": None}, "val", 10)
    assert youden.update({"threshold": 0.4, "sensitivity": 0.75, "specificity": 1.0}, "val", 10)
    assert youden.state == {"method": "youden", "threshold": 0.4, "sensitivity": 0.75, "specificity": 1.0,
                            "series_optimization": True, "dataset": "val", "iterations_trained": 10}

    # 20 negatives (one scoring 0.9, the rest 0.1 .. 0.29) and 4 positives (0.95, 0.8, 0.5, 0.05).
    labels = {v: 0 for v in range(20)} | {20: 1, 21: 1, 22: 1, 23: 1}
    scores = {str(v): 0.1 + 0.01 * v for v in range(19)} | {"19": 0.9, "20": 0.95, "21": 0.8, "22": 0.5, "23": 0.05}
    spec95 = OperatingPoint("spec95", series_optimization=False)
    assert spec95.update({}, "val", 10, labels, scores)
    # FPR <= 0.05 allows one false positive (0.9): the highest sensitivity is then 3/4, at 0.5.
    assert spec95.state["threshold"] == 0.5
    assert spec95.state["sensitivity"] == 0.75 and spec95.state["specificity"] == 0.95
    assert spec95.state["series_optimization"] is False
    # No positive series scores above every negative one: no threshold with FPR <= 0.05 beats 0.
    assert not OperatingPoint("spec95").update({}, "val", 10, {1: 0, 2: 1}, {"1": 0.9, "2": 0.1})
    assert not OperatingPoint("spec95").update({}, "val", 10, {1: 1, 2: 1}, {"1": 0.3, "2": 0.4})
    with pytest.raises(DSAInputError, match="youden, spec95"):
        OperatingPoint("f1")


def test_best_checkpointer_watches_the_first_test_set():
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.TEST.DSA.BEST_METRIC = "AUC"
    cfg.DATASETS.TEST = ("val",)
    assert best_metric_key(cfg) == "dsa/AUC"
    # Several test sets: EvalHook stores the flattened "<dataset>/dsa/<metric>".
    cfg.DATASETS.TEST = ("val", "other")
    assert best_metric_key(cfg) == "val/dsa/AUC"
    results = OrderedDict(val={"dsa": {"AUC": 0.7}}, other={"dsa": {"AUC": 0.9}})
    assert flatten_results_dict(results)[best_metric_key(cfg)] == 0.7
