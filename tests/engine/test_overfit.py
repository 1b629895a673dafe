"""The quick temporal detector (RetinaNet + temporal convolution, T=5) overfits a tiny cohort.

Three 5-frame series of 64 px (two positive, at different places, one negative). After 60
iterations the training loss has fallen at least 5x, the final evaluation finds the perforation
box on every frame of both positive series and separates the series (AUC 1), and the operating
point chosen on that evaluation is stored next to and inside ``model_final.pth``.

The loss is measured on the whole training set with RetinaNet's loss normaliser pinned (it is an
exponential moving average of the number of positive anchors, starting at 100, which would make
the logged loss of the first iterations artificially small).
"""

from __future__ import annotations

import json

import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage
from helpers.cohorts import make_toy_cohort
from helpers.training import QUICK_TEMPORAL, one_thread_and_restored_determinism, tiny_opts, train_args

from perforation_d2.data import DSAClipMapper
from perforation_d2.engine import Trainer, setup

MAX_ITER = 150  # the default mean-over-clip start of TemporalConv fits the toy clips slower than a centre start
LOSS_FACTOR = 5.0


def _training_set_loss(model, batch) -> float:
    with torch.no_grad(), EventStorage(0):
        model.loss_normalizer = 1.0  # the EMA then gives 0.9 + 0.1 * #positive anchors, fixed here
        losses = model(batch)
    return float(sum(losses.values()))


def _iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def test_quick_temporal_config_overfits_a_tiny_cohort(tmp_path):
    cohort_json = make_toy_cohort(tmp_path / "overfit", num_patients=3, positive_patients=[0, 1], frames=5)
    out = tmp_path / "out"
    opts = tiny_opts(
        cohort_json.parent, out, MAX_ITER,
        "INPUT.FRAME_SIZE", "64",
        "INPUT.DSA_AUG.ENABLED", "False",
        "SOLVER.BASE_LR", "0.01",
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR",  # constant after warm-up
        "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "5",
    )
    with one_thread_and_restored_determinism():
        cfg = setup(train_args(["--config-file", QUICK_TEMPORAL, *opts]))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        mapper = DSAClipMapper(cfg, True)
        batch = [mapper(d) for d in DatasetCatalog.get("overfit")]
        start = _training_set_loss(trainer.model, batch)
        trainer.train()
        trainer.model.train()
        end = _training_set_loss(trainer.model, batch)
    print(f"overfit: training-set loss {start:.4f} -> {end:.4f} ({start / end:.1f}x) in {MAX_ITER} iterations")
    assert end * LOSS_FACTOR <= start

    cohort = json.loads(cohort_json.read_text())
    gt = {a["image_id"]: a["bbox"] for a in cohort["annotations"]}
    predictions = json.loads((out / "inference" / "overfit" / "predictions.json").read_text())
    found = {p["image_id"]: p for p in predictions}
    hits = [image_id for image_id, box in gt.items() if image_id in found and _iou(found[image_id]["bbox"], box) >= 0.5]
    assert len(gt) == 10 and len(hits) == len(gt), f"box found on {len(hits)} of {len(gt)} annotated frames"

    metrics = trainer._last_eval_results["dsa"]
    assert metrics["AUC"] == 1.0
    point = json.loads((out / "operating_point.json").read_text())
    assert point["method"] == "youden" and point["threshold"] == metrics["threshold"]
    assert point["iterations_trained"] == MAX_ITER
    assert torch.load(out / "model_final.pth", weights_only=True)["operating_point"] == point
