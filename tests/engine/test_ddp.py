"""Two-process DDP training on CPU (gloo) through ``train_net.py --num-gpus 2``.

Detectron2's ``launch`` spawns the two workers (from this test process, through the same
``cli`` as the command line) and uses gloo without CUDA; our trainer wraps the model in
DistributedDataParallel without ``device_ids`` (CPU), each worker trains on its half of every
batch, and the final evaluation gathers both workers' predictions.
"""

from __future__ import annotations

import json

import torch
from helpers.cohorts import make_toy_cohort
from helpers.training import QUICK_TEMPORAL, REPO, load_train_net, read_metrics, tiny_opts

MAX_ITER = 3


def test_two_process_cpu_ddp(tmp_path, monkeypatch):
    cohort_dir = make_toy_cohort(tmp_path / "ddp", num_patients=2, frames=3).parent
    out = tmp_path / "out"
    # Workers inherit these; monkeypatch restores them (cli hides CUDA from CPU workers).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.syspath_prepend(str(REPO))
    argv = ["--num-gpus", "2", "--dist-url", "auto", "--config-file", QUICK_TEMPORAL,
            # Score threshold 0: every frame keeps its top box, so the gathered predictions show
            # which frames were evaluated.
            *tiny_opts(cohort_dir, out, MAX_ITER, "MODEL.DEVICE", "cpu", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0")]
    assert load_train_net().cli(argv) == 0

    log = (out / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    assert "Making batched data loader with batch_size=1" in log  # 2 images per step, 1 per worker

    metrics = read_metrics(out)
    losses = [metrics[i]["total_loss"] for i in range(MAX_ITER)]
    assert all(torch.isfinite(torch.tensor(losses)))
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["trainer"]["iteration"] == MAX_ITER
    # No "module." prefix: DDP's wrapper is not part of the saved weights.
    assert not any(key.startswith("module.") for key in final["model"])
    # The final evaluation saw every series: each worker predicts its share of the series (sharded
    # whole), and the main one evaluates the gathered predictions, one per frame of the cohort.
    evaluation = json.loads((out / "inference" / "ddp" / "metrics.json").read_text())
    assert evaluation["num_series"] == 2
    cohort = json.loads((cohort_dir / "cohort.json").read_text())
    predictions = json.loads((out / "inference" / "ddp" / "predictions.json").read_text())
    assert sorted(p["image_id"] for p in predictions) == sorted(image["id"] for image in cohort["images"])
    assert len(cohort["images"]) == 6
