"""A NaN/inf loss stops training with the iteration and the ids of the samples that caused it."""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers.cohorts import make_toy_cohort
from helpers.training import (
    QUICK_TEMPORAL,
    load_train_net,
    one_thread_and_restored_determinism,
    tiny_opts,
    train_args,
)

from perforation_d2.engine import NonFiniteLossError, Trainer, setup


def test_nan_loss_names_iteration_and_samples_and_leaves_weights_untouched(tmp_path):
    cohort_dir = make_toy_cohort(tmp_path / "nan", num_patients=2, frames=3).parent
    out = tmp_path / "out"
    with one_thread_and_restored_determinism():
        cfg = setup(train_args(["--config-file", QUICK_TEMPORAL, *tiny_opts(cohort_dir, out, 4)]))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        model = trainer.model
        forward = model.forward
        seen = {}

        def forward_with_nan_at_second_call(batched_inputs):
            losses = forward(batched_inputs)
            seen["calls"] = seen.get("calls", 0) + 1
            if seen["calls"] == 2:  # iteration 1
                seen["batch"] = [(d["image_id"], d["video_id"], d["frame_id"]) for d in batched_inputs]
                seen["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                losses["loss_cls"] = losses["loss_cls"] * math.nan
            return losses

        model.forward = forward_with_nan_at_second_call
        with pytest.raises(NonFiniteLossError) as info:
            trainer.train()

    message = str(info.value)
    assert "iteration 1 " in message
    assert "loss_cls=nan" in message and "loss_box_reg" not in message
    assert len(seen["batch"]) == 2
    for image_id, video_id, frame_id in seen["batch"]:
        assert f"image_id={image_id}, video_id={video_id}, frame_id={frame_id}" in message
    # Stopped before the optimizer step: the weights never saw the NaN batch.
    assert all(torch.equal(v, seen["weights"][k]) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert not (out / "model_final.pth").exists()


def test_diverging_training_exits_with_the_iteration_and_samples(tmp_path, capsys):
    cohort_dir = make_toy_cohort(tmp_path / "div", num_patients=2, frames=3).parent
    train_net = load_train_net()
    opts = tiny_opts(cohort_dir, tmp_path / "out", 6, "SOLVER.BASE_LR", "1e5", "SOLVER.WARMUP_ITERS", "0")
    with one_thread_and_restored_determinism():
        status = train_net.cli(["--config-file", QUICK_TEMPORAL, *opts])
    assert status == 1
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")][-1]
    match = re.match(r"error: Training stopped: the loss became NaN or infinite at iteration (\d+)", error)
    assert match and 0 < int(match.group(1)) < 6
    assert len(re.findall(r"image_id=\d+, video_id=\d+, frame_id=\d+, file_name=\S+\.png", error)) == 2
