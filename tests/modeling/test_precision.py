"""Precision modes of series inference (TEST.DSA.PRECISION) on CPU.

bf16 (and fp16, which torch 2.x autocasts on CPU too) must give the same series decisions and
kept boxes as strict FP32 on a toy cohort of series; the largest score differences are printed
(``pytest -s``). Modes a device cannot run, unknown modes and the deprecated ALLOW_TF32 key are
checked too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from helpers.series_models import FRAME_SIZE
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)
from test_top1 import model_for

import perforation_d2
from perforation_d2.errors import DSAInputError
from perforation_d2.evaluation.inference import compare_precision
from perforation_d2.modeling.precision import check_precision, precision_context, precision_from_cfg
from perforation_d2.modeling.series_inference import SeriesPredictor


def toy_cohort_series(num_series: int = 4) -> list[np.ndarray]:
    """Series of 3-7 frames of smooth random structure (72 x 88), different lengths."""
    series = []
    for index in range(num_series):
        rng = np.random.default_rng(20 + index)
        coarse = rng.integers(0, 256, size=(3 + index, 9, 11)).astype(np.float32)
        frames = np.kron(coarse, np.ones((8, 8), dtype=np.float32))  # (F, 72, 88)
        frames += rng.normal(0.0, 12.0, size=frames.shape)
        series.append(np.clip(frames, 0, 255).astype(np.uint8))
    return series


# Faster R-CNN in bf16 is left out on purpose: with random weights many proposals score almost
# alike, and bf16's 8-bit mantissa moves the key box of one of these four series (decisions still
# agree); that is what the check is for, and why FP32 stays the default.
@pytest.mark.parametrize(("config", "precision"), [
    ("retinanet_tconv_T5.yaml", "bf16"),
    ("retinanet_tconv_T5.yaml", "fp16"),
    ("retinanet.yaml", "bf16"),
    ("faster_rcnn.yaml", "fp16"),
])
def test_reduced_precision_agrees_with_fp32_on_decisions_and_boxes(config, precision):
    model = model_for(config)
    series = toy_cohort_series()
    agreement = compare_precision(model, FRAME_SIZE, series, precision, threshold=0.5)
    print(
        f"\n{config} {precision}: decisions {agreement.decisions_agree}/{agreement.num_series}, boxes "
        f"{agreement.boxes_agree}/{agreement.num_series}, largest score difference: series "
        f"{agreement.max_series_score_difference:.2e}, frame {agreement.max_frame_score_difference:.2e}; "
        f"smallest key-box IoU {agreement.min_key_box_iou:.3f}, largest box difference (same frame) "
        f"{agreement.max_box_difference_px:.3f} px"
    )
    assert agreement.num_series == 4
    assert agreement.agrees, agreement
    # The comparison is not vacuous: reduced precision does change the numbers a little.
    assert 0.0 < agreement.max_frame_score_difference < 0.05


def test_the_autocast_modes_really_compute_in_half_precision():
    model = model_for("retinanet.yaml")
    seen = []
    hook = model.head.register_forward_hook(lambda _m, _i, out: seen.append(out[0][0].dtype))
    try:
        for precision in ("fp32", "bf16", "fp16"):
            SeriesPredictor(model, FRAME_SIZE, precision=precision)(toy_cohort_series(1)[0])
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16, torch.float16]


def test_tf32_mode_turns_tf32_on_and_restores_it():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with precision_context("tf32", "cpu"):
            inside = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        after = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert inside == (True, True) and after == (False, False)


def test_a_mode_the_device_cannot_run_is_one_paragraph():
    with pytest.raises(DSAInputError) as caught:
        check_precision("bf16", "meta")
    message = str(caught.value)
    assert "cannot run inference in torch.bfloat16" in message and "'fp32' runs everywhere" in message
    assert "\n" not in message
    with pytest.raises(DSAInputError, match="is not one of fp32, tf32, bf16, fp16"):
        check_precision("int8", "cpu")
    check_precision("fp16", "cpu")  # torch 2.x autocasts to float16 on CPU


def _cfg(*opts: str):
    cfg = get_cfg()
    perforation_d2.add_perforation_config(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def test_config_key_and_the_deprecated_allow_tf32():
    assert precision_from_cfg(_cfg()) == "fp32"
    assert precision_from_cfg(_cfg("TEST.DSA.PRECISION", "BF16")) == "bf16"
    assert precision_from_cfg(_cfg("TEST.DSA.ALLOW_TF32", "True")) == "tf32"
    with pytest.raises(DSAInputError, match="set only TEST.DSA.PRECISION"):
        precision_from_cfg(_cfg("TEST.DSA.ALLOW_TF32", "True", "TEST.DSA.PRECISION", "bf16"))
    with pytest.raises(DSAInputError, match="TEST.DSA.PRECISION is 'fp8'; valid choices are fp32, tf32, bf16, fp16"):
        precision_from_cfg(_cfg("TEST.DSA.PRECISION", "fp8"))
    model = model_for("retinanet.yaml")
    predictor = SeriesPredictor.from_config(model, _cfg("INPUT.FRAME_SIZE", "64", "TEST.DSA.PRECISION", "bf16"))
    assert predictor.precision == "bf16" and predictor.frame_size == 64
