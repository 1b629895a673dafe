"""Box-loss details that survived mutation testing of modeling/losses.py, checked on a hand case.

Prediction [0, 0, 10, 10] against ground truth [0, 0, 10, 20]: DIoU loss 1 - 1/2 + 25/500 = 0.55.
Its box-delta targets (weights 1) are dx = 0, dy = 5 / 10 = 0.5, dw = 0, dh = log 2.
"""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes

from perforation_d2.modeling.losses import dense_box_regression_loss, dr_iou_loss

PREDICTED = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
TRUTH = torch.tensor([[0.0, 0.0, 10.0, 20.0]])


def test_dr_iou_default_margin_is_the_papers_quarter():
    assert dr_iou_loss(PREDICTED, TRUTH).item() == pytest.approx(0.55 - 0.25, rel=1e-5)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_reductions_of_a_single_box(reduction):
    loss = dr_iou_loss(PREDICTED, TRUTH, beta=0.1, reduction=reduction)
    assert loss.sum().item() == pytest.approx(0.45, rel=1e-5)
    pair = dr_iou_loss(PREDICTED.repeat(2, 1), TRUTH.repeat(2, 1), beta=0.1, reduction=reduction)
    assert pair.sum().item() == pytest.approx(0.9 if reduction != "mean" else 0.45, rel=1e-5)
    assert dr_iou_loss(PREDICTED[:0], TRUTH[:0], reduction=reduction).sum().item() == 0.0


def _dense(loss_type: str, **kwargs) -> float:
    return dense_box_regression_loss(
        [Boxes(PREDICTED)], Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)), [torch.zeros(1, 1, 4)], [TRUTH],
        torch.tensor([[True]]), box_reg_loss_type=loss_type, **kwargs,
    ).item()


def test_dense_loss_passes_the_smooth_l1_beta_and_defaults_to_smooth_l1():
    dy, dh = 0.5, math.log(2.0)
    assert _dense("smooth_l1", smooth_l1_beta=0.0) == pytest.approx(dy + dh, rel=1e-5)
    # beta 0.5: |x| >= beta gives |x| - beta / 2 for both non-zero deltas.
    assert _dense("smooth_l1", smooth_l1_beta=0.5) == pytest.approx(dy - 0.25 + dh - 0.25, rel=1e-5)
    default = dense_box_regression_loss(
        [Boxes(PREDICTED)], Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)), [torch.zeros(1, 1, 4)], [TRUTH],
        torch.tensor([[True]]),
    ).item()
    assert default == pytest.approx(dy + dh, rel=1e-5)
    assert _dense("dr_iou") == pytest.approx(0.55 - 0.25, rel=1e-5)  # the default margin
    assert _dense("dr_iou", dr_iou_beta=0.1) == pytest.approx(0.45, rel=1e-5)
