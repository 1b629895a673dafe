"""DR-IoU (paper eq. 2) against hand-computed values and Detectron2's DIoU."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.layers.losses import diou_loss
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.structures import Boxes

from perforation_d2.errors import DSAInputError
from perforation_d2.modeling.losses import (
    BOX_REG_LOSS_TYPES,
    check_box_reg_loss_type,
    dense_box_regression_loss,
    dr_iou_loss,
)


def test_hand_computed_partial_overlap():
    # IoU = 1/7; centres (1,1) and (2,2): d^2 = 2; enclosing box 3x3: c^2 = 18.
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    gt = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    expected_diou = 1 - 1 / 7 + 2 / 18
    assert dr_iou_loss(pred, gt, beta=0.0).item() == pytest.approx(expected_diou, abs=1e-6)
    assert dr_iou_loss(pred, gt, beta=0.25).item() == pytest.approx(expected_diou - 0.25, abs=1e-6)


def test_beta_margin_zeroes_good_boxes_and_their_gradient():
    # IoU = 0.9, d^2 = 0.25, c^2 = 200: DIoU = 0.10125 < beta = 0.25.
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    gt = torch.tensor([[0.0, 0.0, 10.0, 9.0]])
    assert dr_iou_loss(pred, gt, beta=0.0).item() == pytest.approx(0.1 + 0.25 / 200, abs=1e-6)
    loss = dr_iou_loss(pred, gt, beta=0.25)
    assert loss.item() == 0.0
    loss.sum().backward()
    assert torch.count_nonzero(pred.grad) == 0
    # With a smaller margin the same box is penalised again.
    assert dr_iou_loss(pred, gt, beta=0.05).item() == pytest.approx(0.10125 - 0.05, abs=1e-6)


def test_non_overlapping_boxes_get_a_gradient_towards_the_target():
    # IoU = 0; centres 3 apart: d^2 = 9; enclosing box 4x1: c^2 = 17.
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    gt = torch.tensor([[3.0, 0.0, 4.0, 1.0]])
    loss = dr_iou_loss(pred, gt, beta=0.25)
    assert loss.item() == pytest.approx(1 + 9 / 17 - 0.25, abs=1e-6)
    loss.sum().backward()
    assert torch.count_nonzero(pred.grad) > 0
    # A small step against the gradient moves the box towards the target and lowers the loss.
    moved = (pred - 0.1 * pred.grad).detach()
    assert dr_iou_loss(moved, gt).item() < loss.item()
    assert pred.grad[0, 0] + pred.grad[0, 2] < 0  # the centre is pushed to the right


def test_equals_detectron2_diou_minus_beta_clipped():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 50
    wh = torch.rand(200, 2, generator=gen) * 30 + 1
    pred = torch.cat([xy, xy + wh], dim=1)
    gt = pred + torch.randn(200, 4, generator=gen) * 8
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 0.5)
    diou = diou_loss(pred, gt)
    for beta in (0.0, 0.1, 0.25, 0.6):
        torch.testing.assert_close(dr_iou_loss(pred, gt, beta=beta), (diou - beta).clamp(min=0))
    assert (dr_iou_loss(pred, gt, beta=0.25) == 0).any() and (dr_iou_loss(pred, gt, beta=0.25) > 0).any()


def test_reductions():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    gt = torch.tensor([[1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 4.0, 1.0]])
    per_box = dr_iou_loss(pred, gt)
    assert per_box.shape == (2,)
    assert dr_iou_loss(pred, gt, reduction="sum").item() == pytest.approx(per_box.sum().item())
    assert dr_iou_loss(pred, gt, reduction="mean").item() == pytest.approx(per_box.mean().item())
    empty = torch.zeros((0, 4))
    assert dr_iou_loss(empty, empty, reduction="mean").item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        dr_iou_loss(pred, gt, reduction="max")


def _dense_inputs():
    gen = torch.Generator().manual_seed(1)
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 20.0, 20.0]])),
               Boxes(torch.tensor([[10.0, 10.0, 40.0, 30.0]]))]
    deltas = [torch.randn(2, 2, 4, generator=gen) * 0.3, torch.randn(2, 1, 4, generator=gen) * 0.3]
    gt = [torch.tensor([[1.0, 1.0, 9.0, 7.0], [6.0, 3.0, 18.0, 22.0], [12.0, 8.0, 36.0, 33.0]])] * 2
    fg = torch.tensor([[True, False, True], [True, True, False]])
    return anchors, Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)), deltas, gt, fg


def test_dense_dr_iou_against_hand_decoded_boxes():
    # Three 10x10 anchors at the origin, on two feature levels; weights 1 leave deltas unscaled.
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])),
               Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))]
    deltas = [torch.tensor([[[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0), 0.0]]]),
              torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])]
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)]
    fg = torch.tensor([[True, True, False]])  # the third anchor is background: no loss
    transform = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    loss = dense_box_regression_loss(anchors, transform, deltas, gt, fg, "dr_iou", dr_iou_beta=0.1)
    # Anchor 1: dx 0.1 shifts the box by 1 px to [1, 0, 11, 10]: IoU 90/110, centres 1 px apart,
    # enclosing box 11x10 (c^2 = 221). Anchor 2: dw log 2 doubles the width around the centre,
    # [-5, 0, 15, 10]: IoU 100/200, same centre.
    anchor_1 = 1 - 90 / 110 + 1 / 221 - 0.1
    anchor_2 = 1 - 100 / 200 + 0 - 0.1
    assert loss.item() == pytest.approx(anchor_1 + anchor_2, abs=1e-6)


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou", "diou", "ciou"])
def test_dense_loss_keeps_detectron2_types(loss_type):
    anchors, transform, deltas, gt, fg = _dense_inputs()
    ours = dense_box_regression_loss(anchors, transform, deltas, gt, fg, loss_type)
    theirs = _dense_box_regression_loss(anchors, transform, deltas, gt, fg, box_reg_loss_type=loss_type)
    torch.testing.assert_close(ours, theirs)


def test_unknown_loss_type_lists_choices():
    for valid in BOX_REG_LOSS_TYPES:
        check_box_reg_loss_type(valid, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE")
    with pytest.raises(DSAInputError) as err:
        check_box_reg_loss_type("l2", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE")
    message = str(err.value)
    assert "MODEL.RETINANET.BBOX_REG_LOSS_TYPE" in message and "'l2'" in message
    assert all(name in message for name in BOX_REG_LOSS_TYPES)
