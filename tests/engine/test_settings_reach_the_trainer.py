"""Settings the trainer must carry: TEST.DSA.SERIES_OPTIMIZATION (evaluator, stored operating point)
and the best-checkpoint score across ``--resume``.

Series scores are recomputed from the evaluator's own per-frame top detections by the independent
oracle of tests/helpers/oracle.py (series optimisation in plain Python, or the plain maximum
without it). Cohorts list their frames out of order.
"""

from __future__ import annotations

import json

import pytest
import torch
from detectron2.utils.events import EventStorage
from helpers.cohorts import make_toy_cohort
from helpers.oracle import series_scores
from helpers.quick_model import write_quick_model
from helpers.training import load_train_net, one_thread_and_restored_determinism, tiny_opts, train_args

from perforation_d2.engine import Trainer
from perforation_d2.engine.hooks import ResumableBestCheckpointer
from perforation_d2.engine.launch import restored_logging
from perforation_d2.engine.trainer import build_config


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("so_setting")
    cohort_dir = make_toy_cohort(root / "soc", num_patients=2, frames=5, size=64, frame_order="shuffled").parent
    config, weights = write_quick_model(root / "model")
    return root, cohort_dir, config, weights


@pytest.mark.parametrize("optimise", [False, True])
def test_the_evaluator_of_the_trainer_follows_the_setting(setup_files, tmp_path, optimise):
    root, cohort_dir, config, weights = setup_files
    out = tmp_path / "eval"
    opts = tiny_opts(cohort_dir, out, 1, "MODEL.WEIGHTS", str(weights), "INPUT.FRAME_SIZE", "64",
                     "TEST.DSA.SERIES_OPTIMIZATION", str(optimise))
    with one_thread_and_restored_determinism():
        load_train_net().main(train_args(["--config-file", str(config), "--eval-only", *opts]))
    folder = out / "inference" / cohort_dir.name
    predictions = json.loads((folder / "predictions.json").read_text())
    cohort = json.loads((cohort_dir / "cohort.json").read_text())
    assert len(predictions) == len(cohort["images"])  # score threshold 0: one top detection per frame
    scores = json.loads((folder / "series_scores.json").read_text())
    assert scores == pytest.approx(series_scores(cohort, predictions, optimise))
    other = series_scores(cohort, predictions, not optimise)
    assert scores != pytest.approx(other)  # this case tells the two settings apart


def _trainer(cohort_dir, config, out, *extra):
    opts = tiny_opts(cohort_dir, out, 4, "TEST.EVAL_PERIOD", "2", "INPUT.FRAME_SIZE", "64", *extra)
    return Trainer(build_config(train_args(["--config-file", str(config), *opts])))


def test_the_stored_operating_point_records_the_setting(setup_files, tmp_path):
    _, cohort_dir, config, _ = setup_files
    with one_thread_and_restored_determinism(), restored_logging():
        trainer = _trainer(cohort_dir, config, tmp_path, "TEST.DSA.SERIES_OPTIMIZATION", "False")
        assert trainer.operating_point.update({"threshold": 0.3, "sensitivity": 1.0, "specificity": 0.5}, "soc", 2)
        written = json.loads((tmp_path / trainer.operating_point.write(str(tmp_path))).read_text())
        trainer.checkpointer.save("model_0000001", iteration=1)
    assert written["series_optimization"] is False
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    assert saved["operating_point"]["series_optimization"] is False


def _best_hook(trainer) -> ResumableBestCheckpointer:
    (hook,) = [h for h in trainer._hooks if isinstance(h, ResumableBestCheckpointer)]
    return hook


def test_the_best_score_survives_resume_and_a_worse_evaluation_keeps_model_best(setup_files, tmp_path):
    _, cohort_dir, config, _ = setup_files
    with one_thread_and_restored_determinism(), restored_logging():
        first = _trainer(cohort_dir, config, tmp_path)
        hook = _best_hook(first)
        hook.best_metric, hook.best_iter = 0.77, 1
        first.iter = 1
        first.checkpointer.save("model_0000001", iteration=1)
        assert not (tmp_path / "model_best.pth").exists()

        resumed = _trainer(cohort_dir, config, tmp_path)
        resumed.resume_or_load(resume=True)
        hook = _best_hook(resumed)
        assert (hook.best_metric, hook.best_iter) == (0.77, 1)
        # A worse validation AUC after the resume must not replace the best checkpoint.
        with EventStorage(start_iter=3) as storage:
            resumed.storage = storage
            storage.put_scalar("dsa/AUC", 0.5, smoothing_hint=False)
            hook._best_checking()
    assert not (tmp_path / "model_best.pth").exists()
